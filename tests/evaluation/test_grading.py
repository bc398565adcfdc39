"""Graders read only the answer part of a completion, as the engine split it knowing the prefill: a sample cut
off inside its think block has no answer, so pass@1 is not inflated by boxes written mid-thought."""

from __future__ import annotations

import re

import pytest

from r1kit.evaluation import evaluate
from r1kit.evaluation.grading import get_grader
from r1kit.evaluation.layouts import Problem
from r1kit.generation.engine import Request
from r1kit.generation.sampling import SamplingParams


def engine_completion(text: str, prefilled: bool, finish: str = "stop"):
    """The Completion the engine returns for a reply `text` (through the engine's own `Request.completion`)."""
    return Request(0, [1, 2], SamplingParams(), prefilled, text=text, finish_reason=finish).completion()


MATH = Problem("p", {"question": "6 * 7?"}, "42")
CHOICE = Problem("c", {"question": "?"}, "C", meta={"n_choices": 4})
COUNTDOWN = Problem("d", {"question": "?"}, "", meta={"numbers": [6, 7], "target": 42})


@pytest.mark.parametrize(("grader", "problem", "text", "prefilled", "extracted", "correct"), [
    # truncated after the template's <think> (finish "length"): no answer, however right the reasoning was
    ("math", MATH, "6 * 7 = \\boxed{42}, and checking", True, None, False),
    ("exact", MATH, "so \\boxed{42} maybe", True, None, False),
    ("last_number", MATH, "6 * 7 = 42", True, None, False),
    ("choice", CHOICE, "Answer: C", True, None, False),
    ("countdown", COUNTDOWN, "\\boxed{6 * 7}", True, None, False),
    # the same replies, closed
    ("math", MATH, "6 * 7 = 42</think>\\boxed{42}", True, "42", True),
    ("exact", MATH, "ok</think>\\boxed{42}", True, "42", True),
    ("last_number", MATH, "6 * 7 = 41?</think>It is 42.", True, "42", True),
    ("choice", CHOICE, "hmm</think>Answer: C", True, "C", True),
    ("countdown", COUNTDOWN, "ok</think>\\boxed{6 * 7}", True, "6 * 7", True),
    # the box in the reasoning is never the answer
    ("math", MATH, "\\boxed{42}</think>I am not sure.", True, None, False),
    ("last_number", MATH, "42</think>I am not sure.", True, None, False),
    # the model opens the block itself, or never opens one
    ("math", MATH, "<think>6 * 7 = \\boxed{42}", False, None, False),
    ("math", MATH, "<think>ok</think>\\boxed{42}", False, "42", True),
    ("math", MATH, "Easy: \\boxed{42}", False, "42", True),
    # double-closed: the answer part starts after the first </think>
    ("math", MATH, "a</think>\\boxed{41}</think>\\boxed{42}", True, None, False),
    ("math", MATH, "\\boxed{41}</think>b</think>\\boxed{42}", True, "42", True),
])
def test_graders_read_the_answer_part(grader, problem, text, prefilled, extracted, correct):
    g = get_grader(grader)
    finish = "stop" if "</think>" in text or not (prefilled or text.startswith("<think>")) else "length"
    c = engine_completion(text, prefilled, finish)
    answer = g.extract(c, problem)
    assert answer == extracted
    assert g.check([answer], [problem]) == [correct]


def test_code_grader_ignores_a_program_written_inside_the_reasoning():
    problem = Problem("h", {"question": "f"}, "", meta={"tests": "assert f(1) == 2", "entry_point": "f"})
    code = "```python\ndef f(x):\n    return x + 1\n```"
    g = get_grader("code")
    assert g.extract(engine_completion(f"Plan: {code}", True, "length"), problem) is None
    program = g.extract(engine_completion(f"Plan.</think>{code}", True), problem)
    assert program == "def f(x):\n    return x + 1\n"
    assert g.check([None, program], [problem, problem]) == [False, True]


def test_truncated_samples_do_not_inflate_pass_at_1(tok):
    """Every sample writes the right sum in a box mid-thought; only odd seeds close the block in time."""
    seeds_seen = []

    def generate(model, tokenizer, prompts, *, seed, **_):
        out = []
        for messages, s in zip(prompts, seed, strict=True):
            a, b = map(int, re.search(r"What is (\d+)\+(\d+)\?", messages[-1]["content"]).groups())
            text = f"{a} + {b} = \\boxed{{{a + b}}}, let me double check"
            closed = s % 2 == 1
            out.append(engine_completion(text + (f"</think>\\boxed{{{a + b}}}" if closed else ""), True,
                                         "stop" if closed else "length"))
            seeds_seen.append(s)
        return out

    result = evaluate(None, tok, "addition", limit=4, samples=4, generate_fn=generate)
    expected = sum(s % 2 for s in seeds_seen) / len(seeds_seen)
    assert 0 < expected < 1 and len(seeds_seen) == 16
    assert result["pass@1"] == pytest.approx(expected)
