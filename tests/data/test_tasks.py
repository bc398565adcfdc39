"""Synthetic tasks: answers checked by independent arithmetic (eval, sorted, str.count), not by the generators."""

import re
import string

import pytest

from r1kit.data import TASKS, check_countdown, make_task_set
from r1kit.errors import R1kitError

EQUATION = re.compile(r"(?<![\d)])(-?\d+(?:[-+*]\d+)+)=(-?\d+)")


def _check_steps(solution: str) -> int:
    """Every 'a+b=c' style equation written in a solution is true; returns how many were checked."""
    found = EQUATION.findall(solution)
    for lhs, rhs in found:
        assert eval(lhs) == int(rhs), (lhs, rhs, solution)
    return len(found)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_addition_answers_and_carries(level):
    for ex in make_task_set("addition", 50, level=level, seed=1):
        a, b = re.fullmatch(r"What is (\d+)\+(\d+)\?", ex["question"]).groups()
        assert len(a) == len(b) == level
        assert ex["answer"] == str(int(a) + int(b))
        assert _check_steps(ex["solution"]) == level
        assert ex["solution"].endswith(f"So {ex['answer']}.")


def test_addition_carry_written_out():
    from r1kit.data.tasks import addition_steps

    assert addition_steps(61, 67) == ["1+7=8, write 8.", "6+6=12, write 2 carry 1.", "Write 1."]
    assert addition_steps(18, 14) == ["8+4=12, write 2 carry 1.", "1+1+1=3, write 3."]
    assert addition_steps(3, 8) == ["3+8=11."]


@pytest.mark.parametrize("level", [1, 2, 3])
def test_multistep_follows_precedence(level):
    for ex in make_task_set("multistep", 100, level=level, seed=2):
        expr = re.fullmatch(r"What is ([-+*\d]+)\?", ex["question"]).group(1)
        assert len(re.findall(r"[-+*]", expr)) == level + 1
        assert ex["answer"] == str(eval(expr))  # Python applies the same precedence
        assert _check_steps(ex["solution"]) == level + 1


def test_multistep_hand_worked():
    from r1kit.data.tasks import evaluate_steps

    value, steps = evaluate_steps([3, 4, 5, 2], ["+", "*", "-"])  # 3+4*5-2 = 3+20-2 = 21
    assert value == 21
    assert steps == ["4*5=20, giving 3+20-2.", "3+20=23, giving 23-2.", "23-2=21."]


@pytest.mark.parametrize("level", [1, 2, 3])
def test_countdown_answer_reaches_target(level):
    for ex in make_task_set("countdown", 100, level=level, seed=3):
        assert len(ex["numbers"]) == level + 2
        assert f"Make {ex['target']} from {','.join(map(str, ex['numbers']))}" in ex["question"]
        assert eval(ex["answer"]) == ex["target"]
        assert sorted(int(t) for t in re.findall(r"\d+", ex["answer"])) == sorted(ex["numbers"])
        assert check_countdown(ex["answer"], ex["numbers"], ex["target"])
        _check_steps(ex["solution"])


@pytest.mark.parametrize(
    ("expr", "ok"),
    [
        ("(6+2)*7", True),
        ("7*(2+6)", True),  # any valid expression, not only the reference one
        ("7*2*6-28", False),  # 28 is not one of the numbers
        ("6+2*7", False),  # = 20
        ("(6+2)*7=56", True),  # a trailing "=target" is tolerated
        ("(6+2)*7*1", False),  # 1 is not given
        ("(6+2)*7+6-6", False),  # 6 used three times
        ("56", False),
        ("(6+2)*7/1", False),  # no division
        ("-(-(6+2)*7)", False),  # no unary minus
        ("__import__('os').getcwd()", False),
        ("(6+2.0)*7", False),
        ("", False),
        ("1" * 500, False),
    ],
)
def test_check_countdown(expr, ok):
    assert check_countdown(expr, [7, 2, 6], 56) is ok


@pytest.mark.parametrize("level", [1, 2, 3])
def test_linear_solution_satisfies_equation(level):
    for ex in make_task_set("linear", 100, level=level, seed=4):
        a, b, c = map(int, re.fullmatch(r"Solve (\d+)x([-+]\d+)=(-?\d+)\.", ex["question"]).groups())
        x = int(ex["answer"])
        assert a * x + b == c
        assert f"{a}x={c - b}." in ex["solution"]


@pytest.mark.parametrize("level", [1, 2, 3])
def test_sorting(level):
    for ex in make_task_set("sorting", 100, level=level, seed=5):
        values = [int(v) for v in re.fullmatch(r"Sort ([\d,]+)\.", ex["question"]).group(1).split(",")]
        assert len(values) == 2 * level + 2
        assert ex["answer"] == ",".join(map(str, sorted(values)))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_counting(level):
    for ex in make_task_set("counting", 100, level=level, seed=6):
        letter, text = re.fullmatch(r"How many ([a-z]) in ([a-z]+)\?", ex["question"]).groups()
        assert ex["answer"] == str(text.count(letter))
        assert ex["solution"].count(f"{letter}(") == text.count(letter)


def _canonical(ex):
    """The instance up to answer-preserving symmetry, computed here from the question text."""
    if ex["task"] == "addition":
        return frozenset(re.findall(r"\d+", ex["question"]))
    if ex["task"] == "sorting":
        return tuple(sorted(int(v) for v in re.findall(r"\d+", ex["question"])))
    if ex["task"] == "countdown":
        return (tuple(sorted(ex["numbers"])), ex["target"])
    return ex["question"]


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("level", [1, 2])
def test_train_and_test_splits_are_disjoint(name, level):
    n = 15 if level == 1 else 300
    train = make_task_set(name, 4 * n, level=level, split="train", seed=0, unique=False)
    train += make_task_set(name, 4 * n, level=level, split="train", seed=1, unique=False)
    test = make_task_set(name, n, level=level, split="test", seed=0)
    assert not {_canonical(e) for e in train} & {_canonical(e) for e in test}
    assert len({e["question"] for e in test}) == n  # distinct within a set


@pytest.mark.parametrize("name", sorted(TASKS))
def test_short_plain_ascii_at_low_levels(name):
    printable = set(string.printable) - set("\t\n\r\x0b\x0c")
    if name.endswith("_tool"):
        printable.add("\n")  # tool cells and their output are on lines of their own
    for level in (1, 2):
        for ex in make_task_set(name, 200, level=level, seed=7, unique=False):
            text = ex["question"] + ex["solution"] + ex["answer"]
            assert len(text) < 200, text
            assert set(text) <= printable
            assert ex["solution"].endswith(f"So {ex['answer']}.")
            assert ex["task"] == name and ex["level"] == level and ex["id"].startswith(name)


def test_seeded_and_reproducible():
    for name in TASKS:
        a = make_task_set(name, 30, seed=11, level=2)
        assert a == make_task_set(name, 30, seed=11, level=2)
        assert a != make_task_set(name, 30, seed=12, level=2)
        assert len({e["id"] for e in a}) == 30


def test_bad_arguments_and_exhausted_space():
    with pytest.raises(R1kitError, match="unknown task"):
        make_task_set("division", 3)
    with pytest.raises(R1kitError, match="level"):
        make_task_set("addition", 3, level=0)
    with pytest.raises(R1kitError, match="split"):
        make_task_set("addition", 3, split="valid")
    # 1-digit addition has 100 questions in all, about a fifth of them in the test split
    with pytest.raises(R1kitError, match="distinct"):
        make_task_set("addition", 60, level=1, split="test")
    repeated = make_task_set("addition", 60, level=1, split="test", unique=False)
    assert len(repeated) == 60 and len({e["question"] for e in repeated}) < 60


def test_multiplication_partial_products_and_the_tool_variant():
    from r1kit.data.tasks import multiplication_steps

    assert multiplication_steps(482, 37) == ["482*7=3374.", "482*30=14460.", "3374+14460=17834."]
    assert multiplication_steps(512, 40) == ["512*40=20480."]  # a zero digit adds no partial product
    [plain] = make_task_set("multiplication", 1, level=2, seed=3)
    a, b = map(int, plain["question"].removeprefix("What is ").removesuffix("?").split("*"))
    assert (len(str(a)), len(str(b))) == (3, 2) and plain["answer"] == str(a * b)
    [tool] = make_task_set("multiplication_tool", 1, level=3, seed=3)
    a, b = map(int, tool["question"].removeprefix("What is ").removesuffix("?").split("*"))
    assert tool["solution"] == (f"<code>\nprint({a}*{b})\n</code>\n<interpreter>\n{a * b}\n</interpreter>\n"
                                f"So {a * b}.")


def test_the_tool_variant_shares_the_plain_tasks_splits():
    """Training on multiplication_tool never sees a held-out multiplication question."""
    test = {ex["question"] for ex in make_task_set("multiplication", 300, level=2, split="test")}
    train_tool = {ex["question"] for ex in make_task_set("multiplication_tool", 3000, level=2, split="train")}
    test_tool = {ex["question"] for ex in make_task_set("multiplication_tool", 300, level=2, split="test")}
    assert not test & train_tool and test & test_tool
