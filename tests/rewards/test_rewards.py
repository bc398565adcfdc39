"""Format, language, length rewards with hand-computed values; the registry and combine_rewards."""

import math

import pytest

from r1kit.errors import R1kitError
from r1kit.rewards import REWARDS, combine_rewards, get_reward
from r1kit.rewards.format import format_reward
from r1kit.rewards.language import language_reward
from r1kit.rewards.length import cosine_scaled, soft_overlong_reward


@pytest.mark.parametrize(("text", "kw", "expected"), [
    ("<think>reason</think>answer", {}, 1.0),
    ("<think>reason</think>", {}, 0.0),  # no answer
    ("<think></think>answer", {}, 0.0),  # no reasoning
    ("reason</think>answer", {}, 1.0),  # <think> prefilled by the template, detected
    ("reason</think>answer", {"prefilled_think": True}, 1.0),
    ("<think>reason</think>answer", {"prefilled_think": True}, 0.0),  # a second <think> after the prefill
    ("reason</think>answer", {"prefilled_think": False}, 0.0),
    ("<think>a</think>b<think>c</think>d", {}, 0.0),  # two blocks
    ("preamble<think>a</think>b", {}, 0.0),
    ("just an answer", {}, 0.0),
    ("<think>unfinished reasoning", {}, 0.0),
])
def test_format_reward(text, kw, expected):
    assert format_reward(text, **kw) == expected


def test_language_reward_hand_computed():
    # 3 English words + 2 Chinese characters (one word each) -> 3/5 for en, 2/5 for zh
    text = "<think>we add them 加法</think>42"
    assert language_reward(text, language="en") == pytest.approx(3 / 5)
    assert language_reward(text, language="zh") == pytest.approx(2 / 5)
    assert language_reward("<think>\\frac{1}{2} + 3 = x</think>ok", language="en") == 1.0  # LaTeX/symbols ignored
    assert language_reward("<think>это тест</think>ok", language="ru") == 1.0
    assert language_reward("<think>abc</think>ok", language="xx") is None


def test_soft_overlong_hand_computed():
    # L_max = 20, L_cache = 5: zero up to 15, then (15 - L) / 5, then -1
    f = soft_overlong_reward
    assert f("", completion_tokens=10, max_tokens=20, overlong_buffer=5) == 0.0
    assert f("", completion_tokens=15, max_tokens=20, overlong_buffer=5) == 0.0
    assert f("", completion_tokens=17, max_tokens=20, overlong_buffer=5) == pytest.approx(-0.4)
    assert f("", completion_tokens=20, max_tokens=20, overlong_buffer=5) == pytest.approx(-1.0)
    assert f("", completion_tokens=25, max_tokens=20, overlong_buffer=5) == -1.0
    assert f("", completion_tokens=17) is None


def test_cosine_hand_computed():
    assert cosine_scaled(True, 0, 100) == pytest.approx(1.0)
    assert cosine_scaled(True, 100, 100) == pytest.approx(0.5)
    assert cosine_scaled(True, 50, 100) == pytest.approx(0.75)  # cos(pi/2) = 0 -> midpoint
    assert cosine_scaled(False, 0, 100) == pytest.approx(-1.0)
    assert cosine_scaled(False, 100, 100) == pytest.approx(-0.5)
    expected = 0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 4))
    assert cosine_scaled(True, 25, 100) == pytest.approx(expected)


def test_accuracy_kinds():
    acc = get_reward("accuracy")
    assert acc("<think>x</think>\\boxed{\\frac12}", answer="0.5") == 1.0
    assert acc("<think>\\boxed{0.5}</think>no idea", answer="0.5") == 0.0
    assert acc("<think>x</think>\\boxed{1}", answer=None) is None
    assert acc("<think>x</think>Answer: c", answer="C", choices=["1", "2", "3", "4"]) == 1.0
    assert acc("<think>x</think>Answer: A or C", answer="C", choices=["1", "2", "3", "4"]) == 0.0
    code = "<think>x</think>```python\ndef f(x):\n    return x + 1\n```"
    tests = "assert f(1) == 2\nassert f(2) == 4"
    assert acc(code, tests=tests) == 0.5
    assert acc(code, tests=tests, code_scoring="all") == 0.0
    assert acc("<think>x</think>no code", tests=tests) == 0.0
    assert get_reward("cosine")("<think>x</think>\\boxed{2}", answer="2", completion_tokens=0,
                                max_tokens=10) == pytest.approx(1.0)


# ---- every reward reads the answer part as r1kit.reasoning splits it ----------------------------------------------
CODE = "```python\ndef f(x):\n    return x + 1\n```"
TESTS = "assert f(1) == 2"


@pytest.mark.parametrize(("name", "text", "example", "expected"), [
    # truncated after the template's <think>: the reply never reached an answer, whatever its reasoning wrote
    ("accuracy", "so it is \\boxed{42}, let me check", {"answer": "42"}, 0.0),
    ("last_number", "so it is 42, let me check", {"answer": "42"}, 0.0),
    ("accuracy", "Answer: C and then", {"answer": "C", "choices": list("1234")}, 0.0),
    ("accuracy", f"I will write {CODE}", {"tests": TESTS}, 0.0),
    ("cosine", "so \\boxed{42}", {"answer": "42", "completion_tokens": 0, "max_tokens": 10}, -1.0),
    ("format", "so \\boxed{42}", {}, 0.0),
    # the same replies, closed: full credit
    ("accuracy", "so it is 42</think>\\boxed{42}", {"answer": "42"}, 1.0),
    ("last_number", "so it is 41</think>It is 42.", {"answer": "42"}, 1.0),
    ("accuracy", "hmm</think>Answer: C", {"answer": "C", "choices": list("1234")}, 1.0),
    ("accuracy", f"plan</think>{CODE}", {"tests": TESTS}, 1.0),
    ("cosine", "so</think>\\boxed{42}", {"answer": "42", "completion_tokens": 0, "max_tokens": 10}, 1.0),
    ("format", "so</think>\\boxed{42}", {}, 1.0),
    # a box in the reasoning is never the answer
    ("accuracy", "\\boxed{42}</think>I am not sure.", {"answer": "42"}, 0.0),
    ("last_number", "42</think>I am not sure.", {"answer": "42"}, 0.0),
    # double-closed: everything after the first </think> is the answer part
    ("accuracy", "a</think>\\boxed{41}</think>\\boxed{42}", {"answer": "42"}, 0.0),  # two different boxes
    ("accuracy", "\\boxed{41}</think>b</think>\\boxed{42}", {"answer": "42"}, 1.0),
    ("format", "a</think>b</think>\\boxed{42}", {}, 0.0),
])
def test_rewards_under_a_prefilled_think(name, text, example, expected):
    assert get_reward(name)(text, prefilled_think=True, **example) == pytest.approx(expected)


@pytest.mark.parametrize(("name", "text", "example", "expected"), [
    # never opened, not prefilled: the whole reply is the answer (the format reward still wants a block)
    ("accuracy", "so it is \\boxed{42}", {"answer": "42"}, 1.0),
    ("last_number", "so it is 42", {"answer": "42"}, 1.0),
    ("format", "so it is \\boxed{42}", {}, 0.0),
    # opened by the model and cut off: no answer
    ("accuracy", "<think>so it is \\boxed{42}", {"answer": "42"}, 0.0),
    ("last_number", "<think>so it is 42", {"answer": "42"}, 0.0),
    ("accuracy", f"<think>I will write {CODE}", {"tests": TESTS}, 0.0),
])
def test_rewards_without_a_prefill(name, text, example, expected):
    assert get_reward(name)(text, prefilled_think=False, **example) == pytest.approx(expected)


def test_language_reward_reads_a_truncated_prefilled_reply_as_reasoning():
    # 2 English words + 1 Chinese character, all reasoning (the block never closed)
    assert language_reward("we add 加", language="en", prefilled_think=True) == pytest.approx(2 / 3)
    assert language_reward("we add 加</think>答案", language="en", prefilled_think=True) == pytest.approx(2 / 3)


def test_combine_passes_the_prefill_fact_to_every_reward():
    example = {"answer": "42", "prefilled_think": True}
    total, per = combine_rewards("maybe \\boxed{42}", example, {"accuracy": 1.0, "format": 1.0})
    assert per == {"accuracy": 0.0, "format": 0.0} and total == 0.0


def test_register_reward_refuses_a_taken_name_and_adds_a_new_one(monkeypatch):
    from r1kit.rewards import registry

    monkeypatch.setattr(registry, "REWARDS", dict(registry.REWARDS))  # a private copy: the real one is untouched
    with pytest.raises(R1kitError, match="already registered"):
        registry.register_reward("accuracy", lambda completion, **_: 1.0)
    registry.register_reward("sevens", lambda completion, **_: float(completion.count("7")))
    assert registry.get_reward("sevens")("777") == 3.0
    assert "sevens" not in REWARDS


def test_combine_excludes_none_and_reports_it():
    example = {"answer": "42", "language": "en"}
    total, per = combine_rewards("<think>easy</think>\\boxed{42}", example,
                                 {"accuracy": 1.0, "format": 0.5, "soft_overlong": 1.0})
    assert per == {"accuracy": 1.0, "format": 1.0, "soft_overlong": None}
    assert total == pytest.approx(1.5)
    with pytest.raises(R1kitError, match="unknown reward"):
        combine_rewards("x", {}, {"nope": 1.0})
    assert {"accuracy", "format", "language", "soft_overlong", "cosine"} <= set(REWARDS)
