"""pass@k, cons@k and aggregation against values computed by hand (or by exact binomials written out here)."""

from fractions import Fraction
from math import comb, sqrt

import pytest

from r1kit.evaluation.metrics import (
    accuracy_by_length,
    cons_at_k,
    majority_vote,
    mean_and_stderr,
    pass_at_k,
    report_ks,
    summarize_scores,
)


def _same(a: str, b: str) -> bool:
    return a == b


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, 1.0),  # n - c = 3 < k: every 4-subset holds a correct sample
        (4, 0, 2, 0.0),
        (4, 4, 1, 1.0),
        (16, 1, 4, 0.25),  # 1 - C(15,4)/C(16,4) = 1 - 12/16
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_matches_exact_binomials():
    for n, c, k in [(200, 3, 100), (1000, 7, 64), (64, 50, 32)]:
        exact = 1 - Fraction(comb(n - c, k), comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote_counts_and_ties():
    assert majority_vote(["1", "2", "2", None], _same) == 1  # "2" wins 2-1
    assert majority_vote(["3", "1", "1", "3"], _same) == 0  # 2-2 tie: the group seen first wins
    assert majority_vote(["1", "3", "3", "1"], _same) == 0
    assert majority_vote([None, None, None, "4"], _same) == 3  # None never votes
    assert majority_vote([None, None], _same) is None
    numeric = lambda a, b: float(a) == float(b)
    assert majority_vote(["7", "0.50", "2", "0.5"], numeric) == 1  # 0.50 and 0.5 are one group


def test_cons_at_k_uses_first_k_samples():
    answers = ["5", "6", "6", "5", "5"]
    correct = [True, False, False, True, True]
    assert cons_at_k(answers, correct, 3, _same) is False  # "6" wins among the first three
    assert cons_at_k(answers, correct, 5, _same) is True  # "5" wins 3-2
    assert cons_at_k([None, None], [False, False], 2, _same) is False


def test_mean_and_stderr():
    mean, se = mean_and_stderr([0.75, 0.25])
    assert mean == 0.5
    assert se == pytest.approx(sqrt(2 * 0.25**2 / 1) / sqrt(2))  # sample sd (ddof=1) / sqrt(n)
    assert mean_and_stderr([0.3]) == (0.3, 0.0)


def test_report_ks():
    assert report_ks(1) == [1]
    assert report_ks(4) == [1, 2, 4]
    assert report_ks(6) == [1, 2, 4, 6]
    assert report_ks(64) == [1, 2, 4, 8, 16, 32, 64]


def test_summarize_scores_hand_example():
    # problem 1: 3 of 4 correct, majority "1/2" correct; problem 2: 1 of 4, majority "7" wrong.
    correct = [[True, True, False, True], [False, False, True, False]]
    answers = [["1/2", "1/2", "3", "1/2"], ["7", "7", "9", None]]
    s = summarize_scores(correct, answers, _same)
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["pass@1_stderr"] == pytest.approx(0.25)
    # pass@2: p1 = 1 - C(1,2)/C(4,2) = 1; p2 = 1 - C(3,2)/C(4,2) = 0.5
    assert s["pass@2"] == pytest.approx(0.75)
    assert s["pass@4"] == pytest.approx(1.0)
    assert s["cons@4"] == pytest.approx(0.5)
    assert "cons@4" not in summarize_scores(correct, None, _same)


def test_accuracy_by_length_bins():
    bins = accuracy_by_length([10, 20, 90, 100], [True, True, False, True], n_bins=2)
    assert bins == [
        {"lo": 0, "hi": 50, "count": 2, "accuracy": 1.0},
        {"lo": 50, "hi": 100, "count": 2, "accuracy": 0.5},
    ]
