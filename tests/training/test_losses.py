"""GRPO, SFT and distillation losses against references written out with plain Python loops.

The GRPO reference computes, token by token with `math`, both the loss and its analytic derivative with
respect to each current log-prob, so gradients are checked against calculus, not against autograd of the same
code.
"""

import itertools
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from r1kit.config import build
from r1kit.errors import ConfigError
from r1kit.training.advantages import group_advantages
from r1kit.training.losses import (
    GRPOLossConfig,
    cross_entropy_loss,
    entropy_from_logits,
    grpo_loss,
    kd_loss,
    selective_log_softmax,
)

B_GROUPS, G, T, MAX_LEN = 2, 4, 6, 8
B = B_GROUPS * G


def fixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3  # current policy
    old = logps + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)  # wide enough to clip
    ref = logps + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    rollout = old + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [6, 3, 5, 1, 6, 2, 4, 6]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.5, 0.0, 1.5], dtype=torch.float64)
    return logps, old, ref, rollout, mask, rewards


def ref_advantages(rewards, scale, eps=1e-4):
    batch_std = statistics.stdev(rewards)
    adv = []
    for q in range(0, len(rewards), G):
        group = rewards[q : q + G]
        mean, std = statistics.mean(group), statistics.stdev(group)
        denom = {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
        adv += [(r - mean) / denom for r in group]
    return adv


def ref_grpo(logps, old, ref, rollout, mask, adv, cfg, steps=1, tokens=None):
    """Returns (loss, dloss/dlogps) as Python floats / nested lists, one token at a time."""
    el, eh = cfg["eps_low"], cfg["eps_high"]
    n_b, n_t = len(logps), len(logps[0])
    n_all = sum(sum(row) for row in mask)
    token_losses = [[0.0] * n_t for _ in range(n_b)]
    token_grads = [[0.0] * n_t for _ in range(n_b)]
    for i in range(n_b):
        for t in range(n_t):
            if not mask[i][t]:
                continue
            lp = logps[i][t]
            o = lp if old is None else old[i][t]
            rho = math.exp(lp - o)
            a = adv[i]
            unclipped, clipped = rho * a, min(max(rho, 1 - el), 1 + eh) * a
            clip_active = (rho > 1 + eh and a > 0) or (rho < 1 - el and a < 0)
            loss = -min(unclipped, clipped)
            grad = 0.0 if clip_active else -a * rho
            if cfg.get("tis_cap") is not None:
                w = min(math.exp(o - rollout[i][t]), cfg["tis_cap"])
                loss, grad = loss * w, grad * w
            if cfg["beta"] > 0:
                d = ref[i][t] - lp
                k3, dk3 = math.exp(d) - d - 1, 1 - math.exp(d)
                if cfg.get("unbiased_kl"):
                    k3, dk3 = k3 * rho, dk3 * rho + k3 * rho
                loss += cfg["beta"] * k3
                grad += cfg["beta"] * dk3
            token_losses[i][t], token_grads[i][t] = loss, grad
    # weight of each token in the aggregate
    weights = [[0.0] * n_t for _ in range(n_b)]
    for i in range(n_b):
        n_i = sum(mask[i])
        for t in range(n_t):
            if mask[i][t]:
                weights[i][t] = {
                    "grpo": 1 / (n_b * n_i * steps),
                    "bnpo": 1 / (n_all * steps),
                    "dr_grpo": 1 / (n_b * MAX_LEN * steps),
                    "dapo": 1 / (n_all if tokens is None else tokens),
                }[cfg["loss_type"]]
    loss = sum(weights[i][t] * token_losses[i][t] for i in range(n_b) for t in range(n_t))
    grads = [[weights[i][t] * token_grads[i][t] for t in range(n_t)] for i in range(n_b)]
    return loss, grads


LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
CLIPS = [(0.2, 0.2), (0.2, 0.28)]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("beta,off_policy", [(0.0, False), (0.04, False), (0.0, True), (0.04, True)])
def test_grpo_loss_and_grad_match_loop_reference(loss_type, scale, clip, beta, off_policy):
    logps, old, ref, _, mask, rewards = fixed_batch()
    cfg = GRPOLossConfig(loss_type, clip[0], clip[1], beta, max_completion_length=MAX_LEN)
    adv = group_advantages(rewards, G, scale)
    lp = logps.clone().requires_grad_(True)
    loss, metrics = grpo_loss(
        lp, adv, mask, cfg, old_logps=old if off_policy else None, ref_logps=ref if beta else None
    )
    loss.backward()

    ref_adv = ref_advantages(rewards.tolist(), scale)
    assert adv.tolist() == pytest.approx(ref_adv, rel=1e-12)
    want_loss, want_grad = ref_grpo(
        logps.tolist(),
        old.tolist() if off_policy else None,
        ref.tolist(),
        None,
        mask.tolist(),
        ref_adv,
        {"loss_type": loss_type, "eps_low": clip[0], "eps_high": clip[1], "beta": beta},
    )
    assert loss.item() == pytest.approx(want_loss, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(lp.grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    if off_policy:  # the fixture is wide enough for the clip to bite
        assert metrics["clip_ratio/region"] > 0
    else:
        assert metrics["ratio/mean"] == metrics["ratio/min"] == metrics["ratio/max"] == 1.0


@pytest.mark.parametrize("unbiased_kl", [False, True])
def test_truncated_importance_sampling_and_unbiased_kl(unbiased_kl):
    logps, old, ref, rollout, mask, rewards = fixed_batch(1)
    cfg = GRPOLossConfig("bnpo", 0.2, 0.28, 0.1, tis_cap=1.5, unbiased_kl=unbiased_kl)
    adv = group_advantages(rewards, G)
    lp = logps.clone().requires_grad_(True)
    loss, metrics = grpo_loss(lp, adv, mask, cfg, old_logps=old, ref_logps=ref, rollout_logps=rollout)
    loss.backward()
    want_loss, want_grad = ref_grpo(
        logps.tolist(),
        old.tolist(),
        ref.tolist(),
        rollout.tolist(),
        mask.tolist(),
        adv.tolist(),
        {
            "loss_type": "bnpo",
            "eps_low": 0.2,
            "eps_high": 0.28,
            "beta": 0.1,
            "tis_cap": 1.5,
            "unbiased_kl": unbiased_kl,
        },
    )
    assert loss.item() == pytest.approx(want_loss, rel=1e-9)
    torch.testing.assert_close(lp.grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert 0 < metrics["tis/mean"] <= 1.5


def test_metrics_match_token_counts():
    logps, old, ref, _, mask, rewards = fixed_batch()
    adv = group_advantages(rewards, G)
    _, m = grpo_loss(logps, adv, mask, GRPOLossConfig(beta=0.04), old_logps=old, ref_logps=ref)
    low = high = kl = n = 0
    ratios = []
    for i in range(B):
        for t in range(T):
            if mask[i, t]:
                rho = math.exp(logps[i, t] - old[i, t])
                ratios.append(rho)
                low += rho < 0.8 and adv[i] < 0
                high += rho > 1.2 and adv[i] > 0
                d = (ref[i, t] - logps[i, t]).item()
                kl += math.exp(d) - d - 1
                n += 1
    assert m["clip_ratio/low"] == pytest.approx(low / n)
    assert m["clip_ratio/high"] == pytest.approx(high / n)
    assert m["clip_ratio/region"] == pytest.approx((low + high) / n)
    assert m["kl"] == pytest.approx(kl / n)
    assert (m["ratio/min"], m["ratio/max"]) == pytest.approx((min(ratios), max(ratios)))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("cuts", [[3], [4], [1, 5], [2, 3, 5]])
def test_gradient_accumulation_equals_full_batch(loss_type, cuts):
    """Micro-batches of any sizes, with the step's normalizers, accumulate exactly the full-batch gradient."""
    logps, old, _, _, mask, rewards = fixed_batch()
    cfg = GRPOLossConfig(loss_type, 0.2, 0.28, max_completion_length=T)
    adv = group_advantages(rewards, G)
    full = logps.clone().requires_grad_(True)
    full_loss, _ = grpo_loss(full, adv, mask, cfg, old_logps=old)
    full_loss.backward()
    split = logps.clone().requires_grad_(True)
    bounds = [0, *cuts, B]
    total = 0.0
    for s in [slice(a, b) for a, b in itertools.pairwise(bounds)]:
        loss, _ = grpo_loss(split[s], adv[s], mask[s], cfg, old_logps=old[s], step_sequences=B,
                            step_tokens=mask.sum())
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(full_loss.item(), rel=1e-6)
    torch.testing.assert_close(split.grad, full.grad)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="loss_type: Input should be 'grpo', 'bnpo', 'dr_grpo' or 'dapo'"):
        build(GRPOLossConfig, {"loss_type": "ppo"}, "loss")
    with pytest.raises(ConfigError, match=r"loss\.epsilon_low: Input should be less than 1"):
        build(GRPOLossConfig, {"epsilon_low": 1.5}, "loss")
    assert GRPOLossConfig(epsilon_low=0.3).epsilon_high == 0.3


def test_missing_inputs_raise():
    logps, _, _, _, mask, rewards = fixed_batch()
    adv = group_advantages(rewards, G)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, adv, mask, GRPOLossConfig(beta=0.1))
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logps, adv, mask, GRPOLossConfig("dr_grpo"))


# ---------------------------------------------------------------------------------------- log-probs, entropy
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g) * 4).to(dtype)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    got = selective_log_softmax(logits, ids, chunk_tokens=4)  # chunks that cut rows
    for b in range(3):
        for t in range(5):
            row = [float(x) for x in logits[b, t].float()]
            lse = math.log(sum(math.exp(x) for x in row))
            assert got[b, t].item() == pytest.approx(row[ids[b, t]] - lse, rel=1e-5, abs=1e-5)
    assert got.dtype == torch.float32


def test_entropy_from_logits():
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1)) * 2
    got = entropy_from_logits(logits, chunk_tokens=4)
    for b in range(2):
        for t in range(3):
            z = sum(math.exp(x) for x in logits[b, t].tolist())
            p = [math.exp(x) / z for x in logits[b, t].tolist()]
            assert got[b, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)
    assert entropy_from_logits(torch.zeros(1, 8)).item() == pytest.approx(math.log(8))


# ----------------------------------------------------------------------------------------- SFT, distillation
def test_cross_entropy_masks_tokens():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 6, generator=g)
    targets = torch.tensor([[1, 2, 3, -100], [5, 0, 4, 2]])
    loss_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 1]])  # e.g. prompt token masked
    total, count = 0.0, 0
    for b in range(2):
        for t in range(4):
            if loss_mask[b, t] and targets[b, t] != -100:
                row = logits[b, t].tolist()
                total += math.log(sum(math.exp(x) for x in row)) - row[targets[b, t]]
                count += 1
    assert cross_entropy_loss(logits, targets, loss_mask).item() == pytest.approx(total / count, rel=1e-5)
    assert cross_entropy_loss(logits, targets, loss_mask, normalizer=10).item() == pytest.approx(total / 10)
    empty = cross_entropy_loss(logits.requires_grad_(), targets, torch.zeros_like(loss_mask))
    empty.backward()
    assert empty.item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_forward_kl(temperature):
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    total, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                ps = F.softmax(student[b, t] / temperature, -1).tolist()
                pt = F.softmax(teacher[b, t] / temperature, -1).tolist()
                total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
                count += 1
    got = kd_loss(student, teacher, mask, temperature)
    assert got.item() == pytest.approx(total / count * temperature**2, rel=1e-5)
    same = student.clone().requires_grad_(True)
    loss = kd_loss(same, student, mask, temperature)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert same.grad.abs().max().item() < 1e-6
