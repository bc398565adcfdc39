"""Group advantages against statistics-module formulas written out per group."""

import statistics

import pytest
import torch

from r1kit.training.advantages import (
    group_advantages,
    keep_informative_groups,
    zero_std_fraction,
    zero_std_mask,
)

REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 2.0, 1.0, 0.0]  # 3 groups of 4; group 1 all equal
G = 4


def reference(rewards, group_size, scale, eps=1e-4):
    batch_std = statistics.stdev(rewards)
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean, std = statistics.mean(group), statistics.stdev(group)
        for r in group:
            a = r - mean
            if scale == "group":
                a /= std + eps
            elif scale == "batch":
                a /= batch_std + eps
            out.append(a)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_matches_formula(scale):
    got = group_advantages(torch.tensor(REWARDS), G, scale)
    assert got.tolist() == pytest.approx(reference(REWARDS, G, scale), rel=1e-5, abs=1e-6)


def test_2d_input_keeps_shape_and_ints_promote():
    got = group_advantages(torch.tensor(REWARDS).view(3, G), G, "group")
    assert got.shape == (3, G)
    assert got.flatten().tolist() == pytest.approx(reference(REWARDS, G, "group"), rel=1e-5, abs=1e-6)
    ints = group_advantages(torch.tensor([1, 0, 0, 0]), 4)
    assert ints.dtype == torch.float32
    assert ints.tolist() == pytest.approx(reference([1.0, 0.0, 0.0, 0.0], 4, "group"), rel=1e-5)


def test_zero_std_group_gets_zero_advantage():
    got = group_advantages(torch.tensor(REWARDS), G, "group")
    assert got[4:8].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_informative_groups_and_zero_std_fraction():
    r = torch.tensor(REWARDS)
    assert keep_informative_groups(r, G).tolist() == [True, False, True]
    assert zero_std_mask(r, G).tolist() == [False, True, False]
    assert zero_std_fraction(r, G) == pytest.approx(1 / 3)


def test_group_size_one_is_all_zero_not_nan():
    got = group_advantages(torch.tensor([1.0, 0.0, 3.0]), 1, "group")
    assert got.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "rewards,group_size,scale",
    [(torch.zeros(10), 4, "group"), (torch.zeros(3, 5), 4, "group"), (torch.zeros(8), 4, "std")],
)
def test_bad_input_raises(rewards, group_size, scale):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size, scale)
