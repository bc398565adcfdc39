"""Group advantages against statistics-module formulas written out per group."""

import statistics

import pytest
import torch

from r1kit.training.advantages import (
    gae,
    group_advantages,
    keep_informative_groups,
    masked_whiten,
    terminal_rewards,
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


# ---------------------------------------------------------------------------------------------- PPO: GAE
def test_gae_hand_computed():
    # gamma = 0.9, lam = 0.8 (gamma * lam = 0.72). Row 0: 3 real tokens. Row 1: 2 real tokens, then padding
    # whose reward and value (5.0, 9.0) must be ignored.
    #  row 0: d2 = 1 - 0.7 = 0.3; d1 = 0.9*0.7 - 0.6 = 0.03; d0 = 0.9*0.6 - 0.5 = 0.04
    #         A2 = 0.3; A1 = 0.03 + 0.72*0.3 = 0.246; A0 = 0.04 + 0.72*0.246 = 0.21712
    #  row 1: d1 = 2 - 0.5 = 1.5 (terminal: no next value); d0 = 0.9*0.5 - 1.0 = -0.55
    #         A1 = 1.5; A0 = -0.55 + 0.72*1.5 = 0.53
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv.tolist() == [pytest.approx([0.21712, 0.246, 0.3]), pytest.approx([0.53, 1.5, 0.0])]
    assert ret.tolist() == [pytest.approx([0.71712, 0.846, 1.0]), pytest.approx([1.53, 2.0, 0.0])]


def gae_loop(rewards, values, lengths, gamma, lam):
    """Plain Python GAE over each row's real tokens."""
    advs, rets = [], []
    for r, v, n in zip(rewards, values, lengths):
        adv, last = [0.0] * len(r), 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            last = r[t] + gamma * next_v - v[t] + gamma * lam * last
            adv[t] = last
        advs.append(adv)
        rets.append([a + v[t] if t < n else 0.0 for t, a in enumerate(adv)])
    return advs, rets


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0)])
def test_gae_matches_python_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    lengths = [7, 3, 0, 1, 5]
    rewards = torch.randn(5, 7, generator=g, dtype=torch.float64)
    values = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = gae_loop(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    for got_row, want_row in zip(adv.tolist(), want_adv):
        assert got_row == pytest.approx(want_row, rel=1e-12, abs=1e-12)
    for got_row, want_row in zip(ret.tolist(), want_ret):
        assert got_row == pytest.approx(want_row, rel=1e-12, abs=1e-12)


def test_gae_lambda_one_gamma_one_is_return_to_go_minus_value():
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    adv, ret = gae(rewards, values, torch.tensor([[1, 1, 1, 0]]), gamma=1.0, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([1.5, 1.0, 2.0, 0.0])  # sum of the rewards still to come
    assert adv.tolist()[0] == pytest.approx([1.4, 0.8, 1.7, 0.0])


def test_gae_rejects_left_padding_and_bad_shapes():
    with pytest.raises(ValueError):
        gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError):
        gae(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3))


def test_terminal_rewards_put_the_score_on_the_last_real_token():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    got = terminal_rewards(torch.tensor([2.0, -1.0, 7.0]), mask)
    assert got.tolist() == [[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_masked_whiten_against_statistics():
    x = torch.tensor([[1.0, 2.0, 4.0], [8.0, 100.0, -50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    real = [1.0, 2.0, 4.0, 8.0]
    mean, std = statistics.mean(real), statistics.stdev(real)
    got = masked_whiten(x, mask, eps=0.0)
    assert got[mask.bool()].tolist() == pytest.approx([(r - mean) / std for r in real], rel=1e-12)
    assert got[~mask.bool()].tolist() == [0.0, 0.0]
    kept = masked_whiten(x, mask, shift_mean=False, eps=0.0)
    assert kept[mask.bool()].tolist() == pytest.approx([(r - mean) / std + mean for r in real], rel=1e-12)
