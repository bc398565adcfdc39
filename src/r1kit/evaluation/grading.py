"""Graders: from a completion to (extracted answer, correct), all checking done by `r1kit.rewards`.

A grader is three small functions chosen once by name (math | exact | choice | code | countdown):
`extract` pulls the final answer out of a completion, `check` judges a batch of extracted answers
against their problems, and `equal` says when two extracted answers count as the same vote for cons@k
(None for code, where programs are not voted on).

Every extractor reads only `completion.answer`: the answer part as `r1kit.reasoning` split the reply, knowing
whether the prompt prefilled `<think>`. A sample cut off inside its think block has an empty answer part and
so no answer, however many `\\boxed{}` its reasoning holds; `completion.text` is never searched.

Leaves out: LLM-as-judge grading and partial credit (a code sample is correct only when every test passes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import r1kit.data
import r1kit.rewards
from r1kit.errors import R1kitError
from r1kit.evaluation.layouts import Problem


@dataclass(frozen=True)
class Grader:
    """extract(completion, problem) -> answer | None; check(answers, problems) -> correct flags; equal."""

    extract: Callable[[Any, Problem], str | None]
    check: Callable[[Sequence[str | None], Sequence[Problem]], list[bool]]
    equal: Callable[[str, str], bool] | None


def normalize(text: str) -> str:
    """Whitespace-collapsed, case-folded text without a trailing period: the key for exact matching."""
    return re.sub(r"\s*,\s*", ",", " ".join(text.split())).rstrip(".").casefold()


def _each(
    check: Callable[[str, Problem], bool],
) -> Callable[[Sequence[str | None], Sequence[Problem]], list[bool]]:
    """Lift a per-answer check to a batch check; a missing answer is wrong."""
    return lambda answers, problems: [
        a is not None and bool(check(a, p)) for a, p in zip(answers, problems, strict=True)
    ]


def _countdown(answer: str, problem: Problem) -> bool:
    return bool(r1kit.data.check_countdown(answer, problem.meta["numbers"], problem.meta["target"]))


def _extract_boxed(completion: Any, problem: Problem) -> str | None:
    return r1kit.rewards.answer_in(completion.answer)


def _extract_choice(completion: Any, problem: Problem) -> str | None:
    return r1kit.rewards.choice_in(completion.answer, n_choices=problem.meta.get("n_choices", 4))


def _extract_last_number(completion: Any, problem: Problem) -> str | None:
    return r1kit.rewards.last_number_in(completion.answer)


def _extract_program(completion: Any, problem: Problem) -> str | None:
    code = r1kit.rewards.code_in(completion.answer)  # the last code block of the answer part
    if code is None:
        return None
    # HumanEval-style: a reply that only gives the body is completed by the prompt's signature.
    entry, prefix = problem.meta.get("entry_point"), problem.meta.get("code_prefix")
    if prefix and entry and f"def {entry}" not in code:
        code = prefix + code
    return code + problem.meta.get("code_suffix", "")


def _run_code(answers: Sequence[str | None], problems: Sequence[Problem], workers: int = 4) -> list[bool]:
    """Run every program against its problem's tests in the rewards sandbox pool, `workers` at a time."""
    todo = [i for i, code in enumerate(answers) if code is not None]
    items = [
        {
            "code": answers[i],
            "tests": problems[i].meta["tests"],
            "entry_point": problems[i].meta.get("entry_point"),
        }
        for i in todo
    ]
    reports = r1kit.rewards.run_tests_batch(items, workers=workers) if items else []
    passed = [False] * len(answers)
    for i, report in zip(todo, reports, strict=True):
        passed[i] = bool(report.all_passed)
    return passed


GRADERS: dict[str, Grader] = {
    "math": Grader(
        _extract_boxed, _each(lambda a, p: r1kit.rewards.math_equal(a, p.gold)), r1kit.rewards.math_equal
    ),
    "exact": Grader(
        _extract_boxed,
        _each(lambda a, p: normalize(a) == normalize(p.gold)),
        lambda a, b: normalize(a) == normalize(b),
    ),
    "choice": Grader(_extract_choice, _each(lambda a, p: a.strip().upper() == p.gold), lambda a, b: a == b),
    "countdown": Grader(_extract_boxed, _each(_countdown), lambda a, b: normalize(a) == normalize(b)),
    # the last number of the reply: for small chat models that answer in prose (see rewards' last_number)
    "last_number": Grader(
        _extract_last_number,
        _each(lambda a, p: r1kit.rewards.math_equal(a, p.gold)),
        r1kit.rewards.math_equal,
    ),
    "code": Grader(_extract_program, _run_code, None),
}


def get_grader(name: str) -> Grader:
    if name not in GRADERS:
        raise R1kitError(f"unknown grader {name!r}; expected one of {sorted(GRADERS)}")
    return GRADERS[name]
