"""Reward functions by name, and their weighted combination.

Every reward has the signature ``f(completion: str, **example) -> float | None``; None means *cannot judge*
(gold missing or unparseable, lengths not given) and is never silently turned into 0 or 1. The example
dict carries the gold fields: ``answer`` (math, or a letter with ``choices``), ``tests`` (+ ``entry_point``)
for code, ``language``, and per-completion facts such as ``completion_tokens`` / ``max_tokens`` and
``prefilled_think`` (the prompt opened the think block). Every reward that reads an answer reads only the
answer part as `r1kit.reasoning` splits it: a reply cut off inside its think block has no answer.

Left out: learned (model-based) rewards; R1 uses rule-based rewards only.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from r1kit.errors import R1kitError
from r1kit.reasoning import answer_part
from r1kit.rewards.answer import answer_in, choice_in
from r1kit.rewards.code import run_tests
from r1kit.rewards.format import format_reward
from r1kit.rewards.language import language_reward
from r1kit.rewards.length import cosine_scaled, soft_overlong_reward
from r1kit.rewards.math_check import math_equal

RewardFn = Callable[..., "float | None"]


def code_in(part: str | None) -> str | None:
    """The last fenced code block (```python or ```) of an answer part, or None."""
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", part or "", flags=re.DOTALL)
    return blocks[-1] if blocks else None


def extract_code(completion: str, prefilled_think: bool | None = False) -> str | None:
    """The last fenced code block of a whole reply's answer part, or None."""
    return code_in(answer_part(completion, prefilled_think))


def accuracy_reward(completion: str, answer: str | None = None, choices: list | None = None,
                    tests: list | str | None = None, entry_point: str | None = None,
                    code_scoring: str = "fraction", timeout: float = 5.0, numbers: list | None = None,
                    target: int | None = None, prefilled_think: bool | None = None,
                    **_: object) -> float | None:
    """1.0/0.0 correctness for math, countdown (`numbers`, `target`) and multiple choice; for code the pass
    fraction ("fraction") or all-or-nothing ("all"). None when the example has no usable gold. A reply
    without an answer part (cut off inside its think block) scores 0.
    """
    part = answer_part(completion, prefilled_think)
    if tests is not None:
        code = code_in(part)
        if code is None:
            return 0.0
        report = run_tests(code, tests, entry_point=entry_point, timeout=timeout)
        if report.total == 0:
            return None
        return float(report.all_passed) if code_scoring == "all" else report.pass_fraction
    if numbers is not None and target is not None:  # countdown: any valid expression reaching the target
        from r1kit.data import check_countdown

        expr = answer_in(part)
        return float(expr is not None and check_countdown(expr, numbers, target))
    if answer is None or not str(answer).strip():
        return None
    if choices is not None:
        gold = str(answer).strip().upper()
        if len(gold) != 1 or not gold.isalpha():
            return None
        return float(choice_in(part, n_choices=len(choices)) == gold)
    return float(math_equal(answer_in(part), str(answer), timeout=timeout))


def cosine_reward(completion: str, completion_tokens: int | None = None, max_tokens: int | None = None,
                  **example: object) -> float | None:
    """Accuracy scaled by length with `cosine_scaled`; None without accuracy or lengths."""
    acc = accuracy_reward(completion, **example)
    if acc is None or completion_tokens is None or max_tokens is None:
        return None
    return cosine_scaled(acc >= 1.0, int(completion_tokens), int(max_tokens))


def last_number_in(part: str | None) -> str | None:
    """The last number of an answer part, thousands separators dropped; None without a part or a number."""
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", part or "")
    return numbers[-1].replace(",", "") if numbers else None


def extract_last_number(completion: str, prefilled_think: bool | None = False) -> str | None:
    """The last number of a whole reply's answer part (never of its reasoning)."""
    return last_number_in(answer_part(completion, prefilled_think))


def last_number_reward(completion: str, answer: str | None = None, prefilled_think: bool | None = None,
                       **_: object) -> float | None:
    """1.0 when the last number of the answer part equals the gold number (GSM8K-style "flexible" grading).

    For small chat models that answer in prose ("23 + 58 = 81") without a marked final answer. Looser than
    `accuracy`: use it only where the prompt cannot make the model mark its answer."""
    if answer is None or not str(answer).strip():
        return None
    number = extract_last_number(completion, prefilled_think)
    return 0.0 if number is None else float(math_equal(number, str(answer)))


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "last_number": last_number_reward,
    "format": format_reward,
    "language": language_reward,
    "soft_overlong": soft_overlong_reward,
    "cosine": cosine_reward,
}


def register_reward(name: str, fn: RewardFn) -> None:
    """Adds a reward under `name` (refuses to overwrite one)."""
    if name in REWARDS:
        raise R1kitError(f"reward {name!r} is already registered")
    REWARDS[name] = fn


def get_reward(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        raise R1kitError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARDS))}") from None


def combine_rewards(completion: str, example: dict, weights: dict[str, float]) -> tuple[float, dict]:
    """Weighted sum of named rewards: ``total = sum(w * r for rewards that judged)``.

    A reward returning None is left out of the total (not renormalized) and reported as None in the
    per-name dict, so a missing gold never masquerades as a right or wrong answer.
    """
    per_name: dict[str, float | None] = {}
    total = 0.0
    for name, weight in weights.items():
        value = get_reward(name)(completion, **example)
        per_name[name] = value
        if value is not None:
            total += float(weight) * value
    return total, per_name
