"""Scores over k sampled answers per problem: pass@1, unbiased pass@k, cons@k (majority vote), length stats.

All functions are pure: per-problem lists in, numbers out. Aggregation over problems reports the mean and its
standard error (sample standard deviation over problems / sqrt(#problems)), the spread a rerun with new
problems drawn from the same distribution would show. Leaves out bootstrap intervals and the variance from
resampling the k answers of one problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), with n samples of which c correct.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the (huge) binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[str | None], equal: Callable[[str, str], bool]) -> int | None:
    """Index of the answer that wins a majority vote, or None when every answer is None.

    Answers are grouped greedily in order: each joins the first group whose representative (its first
    member) it `equal`s. The largest group wins; a tie goes to the group that appeared first. None answers
    (nothing extracted) never vote. Returns the index of the winning group's representative.
    """
    groups: list[list[int]] = []  # each: indices into answers; groups[g][0] is the representative
    for i, a in enumerate(answers):
        if a is None:
            continue
        for g in groups:
            if equal(a, answers[g[0]]):  # type: ignore[arg-type]
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=len)  # max keeps the first of equal-length groups
    return best[0]


def cons_at_k(
    answers: Sequence[str | None], correct: Sequence[bool], k: int, equal: Callable[[str, str], bool]
) -> bool:
    """cons@k: is the majority answer among the first k samples correct? (False when no answer was found.)"""
    if not 1 <= k <= len(answers):
        raise ValueError(f"cons@k needs 1 <= k <= {len(answers)}, got k={k}")
    winner = majority_vote(answers[:k], equal)
    return winner is not None and bool(correct[winner])


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (ddof=1); the error is 0.0 for fewer than two values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean of an empty list")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def report_ks(n: int) -> list[int]:
    """The k values reported for n samples per problem: powers of two below n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return ks + [n]


def summarize_scores(
    correct: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]] | None,
    equal: Callable[[str, str], bool],
) -> dict:
    """Benchmark scores from per-problem correctness lists (all of the same length n).

    Returns flat keys "pass@k" and "pass@k_stderr" for each k of `report_ks(n)` and, when `answers` is given
    (benchmarks with a comparable final answer, not code), "cons@n" and "cons@n_stderr". Values are
    fractions in [0, 1].
    """
    if not correct:
        raise ValueError("no problems to score")
    n = len(correct[0])
    if any(len(c) != n for c in correct):
        raise ValueError("every problem needs the same number of samples")
    out: dict[str, float] = {}
    for k in report_ks(n):
        out[f"pass@{k}"], out[f"pass@{k}_stderr"] = mean_and_stderr(
            [pass_at_k(n, sum(map(bool, c)), k) for c in correct]
        )
    if answers is not None:
        votes = [float(cons_at_k(a, c, n, equal)) for a, c in zip(answers, correct, strict=True)]
        out[f"cons@{n}"], out[f"cons@{n}_stderr"] = mean_and_stderr(votes)
    return out


def accuracy_by_length(tokens: Sequence[int], correct: Sequence[bool], n_bins: int = 8) -> list[dict]:
    """Accuracy of samples binned by output length (equal-width bins over [0, max tokens]).

    Returns one dict per non-empty bin: {"lo", "hi", "count", "accuracy"} (lo inclusive, hi exclusive,
    except the last bin which includes its upper edge).
    """
    if not tokens:
        return []
    top = max(max(tokens), 1)
    width = top / n_bins
    bins: list[list[bool]] = [[] for _ in range(n_bins)]
    for t, c in zip(tokens, correct, strict=True):
        bins[min(int(t / width), n_bins - 1)].append(bool(c))
    return [
        {"lo": round(i * width), "hi": round((i + 1) * width), "count": len(b), "accuracy": sum(b) / len(b)}
        for i, b in enumerate(bins)
        if b
    ]
