"""Synthetic reasoning tasks with exact answers, worked solutions and difficulty levels.

Each task draws one instance from a seeded `random.Random` and returns the plain fields of an example:
`question`, `answer` (exact, a string), `solution` (short worked steps ending in "So <answer>."; no
`<think>` tags or boxed answers: templates add those) and task-specific extras (countdown carries
`numbers` and `target` so a reward can check any valid expression with `check_countdown`).

`make_task_set(name, n, seed=, level=, split=)` returns `n` distinct examples of one split. The train and
test splits are disjoint by construction: every instance has a canonical key (the question up to
symmetries that keep the answer: `23+58` and `58+23` share a key) and a stable hash of that key puts the
instance in exactly one split, so held-out accuracy never measures memorised training questions.

Questions and solutions are short plain ASCII (a character-level toy model with a 256-512 token context
trains on them): at levels 1-2 question + solution + answer stay under 200 characters. A `_tool` variant
(multiplication_tool) asks its family's questions and solves them with a Python tool call (r1kit/tools/python.py
format; the cell and its output on lines of their own); it shares the family's train/test split.
Left out: division (answers stay integers), natural-language word problems, multiple-choice and code tasks
(load those from files with `r1kit.data.loaders`).
"""

from __future__ import annotations

import ast
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from r1kit.errors import R1kitError

MAX_LEVEL = 5
SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # share of each task's instance space (by canonical key) reserved for the test split


@dataclass(frozen=True)
class Task:
    """A synthetic task: `sample(rng, level)` draws the fields of one instance (without id/task/level)."""

    name: str
    description: str
    sample: Callable[[random.Random, int], dict[str, Any]]
    key: Callable[[dict[str, Any]], str]  # canonical key: instances with equal keys share a split
    family: str | None = None  # tasks asking the same questions share splits (train on one, test on the other)


# --- addition ------------------------------------------------------------------------------------------


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10**digits - 1)


def addition_steps(a: int, b: int) -> list[str]:
    """Column-by-column addition of two equal-length numbers, e.g. 61+67 -> ["1+7=8, write 8.",
    "6+6=12, write 2 carry 1.", "Write 1."]; one-digit operands give the single fact "3+8=11."."""
    if a < 10 and b < 10:
        return [f"{a}+{b}={a + b}."]
    steps, carry = [], 0
    for da, db in zip(reversed(str(a)), reversed(str(b))):
        s = int(da) + int(db) + carry
        lhs = f"{da}+{db}" + ("+1" if carry else "")
        carry = s // 10
        steps.append(f"{lhs}={s}, write {s % 10}" + (" carry 1." if carry else "."))
    if carry:
        steps.append("Write 1.")
    return steps


def _sample_addition(rng: random.Random, level: int) -> dict[str, Any]:
    """Two `level`-digit numbers; the solution adds column by column with carries."""
    a, b = _operand(rng, level), _operand(rng, level)
    steps = addition_steps(a, b)
    return {"question": f"What is {a}+{b}?", "answer": str(a + b), "solution": _conclude(steps, a + b)}


def _key_addition(ex: dict[str, Any]) -> str:
    a, b = ex["question"].removeprefix("What is ").removesuffix("?").split("+")
    return "+".join(sorted((a, b)))


# --- multiplication (with and without the Python tool) ---------------------------------------------------


def _multiplication_operands(rng: random.Random, level: int) -> tuple[int, int]:
    """A (level + 1)-digit number times a level-digit one: 3x2 digits at level 2, 6x5 at level 5."""
    return _operand(rng, level + 1), _operand(rng, level)


def multiplication_steps(a: int, b: int) -> list[str]:
    """Partial products by b's digits, then their sum: 482*37 -> ["482*7=3374.", "482*30=14460.",
    "3374+14460=17834."]. Each product of a multi-digit number is one step: a small model cannot do it in its
    head, which is the point of the tool variant."""
    parts = [(a * int(d) * 10**i, f"{a}*{int(d) * 10**i}") for i, d in enumerate(reversed(str(b))) if d != "0"]
    steps = [f"{expr}={value}." for value, expr in parts]
    if len(parts) > 1:
        steps.append("+".join(str(v) for v, _ in parts) + f"={a * b}.")
    return steps


def tool_cell(code: str, output: str) -> str:
    """A Python tool call and its output as they appear in a reply (the format of r1kit/tools/python.py)."""
    return f"<code>\n{code}\n</code>\n<interpreter>\n{output}\n</interpreter>\n"


def _sample_multiplication(rng: random.Random, level: int) -> dict[str, Any]:
    a, b = _multiplication_operands(rng, level)
    return {"question": f"What is {a}*{b}?", "answer": str(a * b),
            "solution": _conclude(multiplication_steps(a, b), a * b)}


def _sample_multiplication_tool(rng: random.Random, level: int) -> dict[str, Any]:
    """The same questions, solved by calling the Python tool: the solution is a cell, its output, the answer."""
    a, b = _multiplication_operands(rng, level)
    return {"question": f"What is {a}*{b}?", "answer": str(a * b),
            "solution": tool_cell(f"print({a}*{b})", str(a * b)) + f"So {a * b}."}


def _key_multiplication(ex: dict[str, Any]) -> str:
    return ex["question"]  # a*b and b*a differ in their digit counts: no symmetry to fold


# --- multistep -----------------------------------------------------------------------------------------


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _render(nums: Sequence[int], ops: Sequence[str]) -> str:
    return str(nums[0]) + "".join(f"{op}{n}" for op, n in zip(ops, nums[1:]))


def evaluate_steps(nums: Sequence[int], ops: Sequence[str]) -> tuple[int, list[str]]:
    """Evaluate `n0 op0 n1 op1 ...` (ops in + - *) with the usual precedence, one operation per step.

    Returns the value and the steps, each "a*b=c, giving <rest>." (the last one "a-b=c.").
    """
    nums, ops, steps = list(nums), list(ops), []
    while ops:
        i = ops.index("*") if "*" in ops else 0  # all products first, then left to right
        value = _apply(nums[i], ops[i], nums[i + 1])
        done = f"{nums[i]}{ops[i]}{nums[i + 1]}={value}"
        nums[i : i + 2], ops[i : i + 1] = [value], []
        steps.append(f"{done}, giving {_render(nums, ops)}." if ops else f"{done}.")
    return nums[0], steps


def _sample_multistep(rng: random.Random, level: int) -> dict[str, Any]:
    """`level + 1` operators over single-digit numbers (1-19 from level 3), mixing + - *."""
    hi = 9 if level <= 2 else 19
    nums = [rng.randint(1, hi) for _ in range(level + 2)]
    ops = [rng.choice("+-*") for _ in range(level + 1)]
    value, steps = evaluate_steps(nums, ops)
    return {
        "question": f"What is {_render(nums, ops)}?",
        "answer": str(value),
        "solution": _conclude(steps, value),
    }


def _key_question(ex: dict[str, Any]) -> str:
    return ex["question"]


# --- countdown -----------------------------------------------------------------------------------------


def _sample_countdown(rng: random.Random, level: int) -> dict[str, Any]:
    """`level + 2` numbers combined left to right with + - * into a positive target; every number used once."""
    hi = 9 if level <= 2 else 15
    max_target = 10 ** (level + 1)
    while True:
        numbers = [rng.randint(1, hi) for _ in range(level + 2)]
        order = rng.sample(numbers, len(numbers))
        expr, value, top_op, steps = str(order[0]), order[0], "", []
        for n in order[1:]:
            op = rng.choice("+-*")
            if op == "*" and top_op in ("+", "-"):
                expr = f"({expr})"
            new = _apply(value, op, n)
            steps.append(f"{value}{op}{n}={new}.")
            expr, value, top_op = f"{expr}{op}{n}", new, op
        if 0 < value <= max_target and value not in numbers:
            break
    shown = ",".join(map(str, numbers))
    return {
        "question": f"Make {value} from {shown} using each once with + - *.",
        "answer": expr,
        "solution": _conclude(steps, expr),
        "numbers": numbers,
        "target": value,
    }


def _key_countdown(ex: dict[str, Any]) -> str:
    return ",".join(map(str, sorted(ex["numbers"]))) + f"->{ex['target']}"


_CHECK_MAX_CHARS = 200


def check_countdown(expr: str, numbers: Sequence[int], target: int) -> bool:
    """True when `expr` uses each of `numbers` exactly once with + - * (and parentheses) and equals `target`.

    A trailing "=<value>" is ignored. Any other syntax (division, powers, unary minus, names, calls,
    non-integer literals) gives False; never raises, since `expr` is untrusted model output.
    """
    if not isinstance(expr, str) or len(expr) > _CHECK_MAX_CHARS:
        return False
    expr = expr.split("=")[0].strip()
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    used: list[int] = []

    def value(node: ast.AST) -> int | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if left is None or right is None:
                return None
            return _apply(left, {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}[type(node.op)], right)
        return None

    result = value(tree)
    return result is not None and result == target and sorted(used) == sorted(numbers)


# --- linear --------------------------------------------------------------------------------------------


def _sample_linear(rng: random.Random, level: int) -> dict[str, Any]:
    """a*x + b = c with integer x; from level 2, x and b may be negative."""
    if level == 1:
        a, x, b = rng.randint(2, 5), rng.randint(0, 9), rng.randint(1, 9)
    else:
        span = 10 * level
        a, x = rng.randint(2, 3 * level + 3), rng.randint(-span, span)
        b = rng.choice([v for v in range(-span, span + 1) if v != 0])
    c = a * x + b
    b_term = f"+{b}" if b > 0 else f"{b}"
    undo = f"Subtract {b}" if b > 0 else f"Add {-b}"
    steps = [f"{undo}: {a}x={c - b}.", f"Divide by {a}: x={x}."]
    return {"question": f"Solve {a}x{b_term}={c}.", "answer": str(x), "solution": _conclude(steps, x)}


# --- sorting -------------------------------------------------------------------------------------------


def _sample_sorting(rng: random.Random, level: int) -> dict[str, Any]:
    """`2 * level + 2` numbers (0-9 at level 1, 0-99 above); the solution takes the smallest each step."""
    hi = 9 if level == 1 else 99
    values = [rng.randint(0, hi) for _ in range(2 * level + 2)]
    rest, steps = list(values), []
    while len(rest) > 1:
        rest.remove(smallest := min(rest))
        steps.append(f"Take {smallest}, left {','.join(map(str, rest))}.")
    answer = ",".join(map(str, sorted(values)))
    return {
        "question": f"Sort {','.join(map(str, values))}.",
        "answer": answer,
        "solution": _conclude(steps, answer),
    }


def _key_sorting(ex: dict[str, Any]) -> str:
    return ex["answer"]  # the sorted multiset: every order of the same numbers has one answer


# --- counting ------------------------------------------------------------------------------------------


def _sample_counting(rng: random.Random, level: int) -> dict[str, Any]:
    """A random string of 4L+2..4L+4 letters over a small alphabet; count one letter, marking each hit."""
    alphabet = "abcdefghijklmn"[: 4 + 2 * level]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(4 * level + 2, 4 * level + 4)))
    letter = rng.choice(alphabet)
    marks, count = [], 0
    for ch in text:
        count += ch == letter
        marks.append(f"{ch}({count})" if ch == letter else ch)
    steps = [" ".join(marks) + "."]
    return {
        "question": f"How many {letter} in {text}?",
        "answer": str(count),
        "solution": _conclude(steps, count),
    }


# --- registry and task sets ----------------------------------------------------------------------------


def _conclude(steps: list[str], answer: object) -> str:
    return " ".join([*steps, f"So {answer}."])


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("addition", "addition with carries; level = digits", _sample_addition, _key_addition),
        Task("multiplication", "(level+1)-digit times level-digit, by partial products",
             _sample_multiplication, _key_multiplication),
        Task("multiplication_tool", "multiplication's questions, solved with the Python tool",
             _sample_multiplication_tool, _key_multiplication, family="multiplication"),
        Task("multistep", "+ - * with precedence; level+1 ops", _sample_multistep, _key_question),
        Task("countdown", "reach a target with + - *", _sample_countdown, _key_countdown),
        Task("linear", "solve a*x + b = c for integer x", _sample_linear, _key_question),
        Task("sorting", "sort 2 * level + 2 small numbers", _sample_sorting, _key_sorting),
        Task("counting", "count a letter in a random string", _sample_counting, _key_question),
    )
}


def split_of(task: str, key: str) -> str:
    """The split ("train" or "test") an instance with canonical `key` belongs to; stable across runs."""
    digest = hashlib.sha256(f"{task}|{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise R1kitError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]


def _check_args(level: int, split: str) -> None:
    if not isinstance(level, int) or not 1 <= level <= MAX_LEVEL:
        raise R1kitError(f"level must be an integer from 1 to {MAX_LEVEL}, got {level!r}")
    if split not in SPLITS:
        raise R1kitError(f"split must be one of {SPLITS}, got {split!r}")


def sample_example(task: Task, rng: random.Random, level: int, split: str) -> dict[str, Any]:
    """Draw instances of `task` until one falls in `split`; return it as a full example dict."""
    while True:
        fields = task.sample(rng, level)
        if split_of(task.family or task.name, task.key(fields)) == split:
            break
    digest = hashlib.sha256(f"{task.name}|{fields['question']}".encode()).hexdigest()[:12]
    return {"id": f"{task.name}-{digest}", "task": task.name, "level": level, **fields}


def make_task_set(
    name: str, n: int, *, seed: int = 0, level: int = 1, split: str = "train", unique: bool = True
) -> list[dict[str, Any]]:
    """`n` examples of task `name` from one split; the same arguments give the same list.

    Each example: {"id", "task", "level", "question", "answer", "solution", **extras}. With `unique` the
    questions are distinct, and R1kitError is raised when the split at this level has fewer than `n`
    (1-digit addition has 100 questions in all); `unique=False` draws independently, repeats allowed.
    Raises R1kitError for an unknown task, level or split.
    """
    task = get_task(name)
    _check_args(level, split)
    if n < 0:
        raise R1kitError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{name}:{level}:{split}:{seed}")
    examples, seen, misses = [], set(), 0
    while len(examples) < n:
        ex = sample_example(task, rng, level, split)
        if unique and ex["question"] in seen:
            misses += 1
            if misses > 1000 + 20 * n:  # the split's instance space is (nearly) exhausted
                raise R1kitError(
                    f"task {name!r} level {level} split {split!r} has only about {len(seen)} distinct "
                    f"questions; asked for {n} (raise the level, lower n, or pass unique=False)"
                )
            continue
        seen.add(ex["question"])
        examples.append(ex)
    return examples
