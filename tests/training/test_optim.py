"""Optimizer groups, schedules against formulas written out here, and clipping against a hand norm."""

import math

import pytest
import torch
from torch import nn

from r1kit.errors import ConfigError
from r1kit.training.optim import build_optimizer, build_scheduler, clip_grad_norm, lr_multiplier


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.register_buffer("router_bias", torch.zeros(3, dtype=torch.float32))


def test_decay_only_on_matrices():
    model = Tiny()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model.proj.weight)}
    assert {id(p) for p in plain["params"]} == {
        id(model.embed.weight),
        id(model.norm.weight),
        id(model.norm.bias),
        id(model.proj.bias),
    }
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_adamw_step_matches_formula():
    """One AdamW step on the decayed matrix: p - lr*(wd*p + g/(|g|+eps)) (bias-corrected first step)."""
    model = Tiny()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    w0 = model.proj.weight.detach().clone()
    g = torch.randn_like(w0)
    model.proj.weight.grad = g
    opt.step()
    want = w0 * (1 - 0.1 * 0.5) - 0.1 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(model.proj.weight.detach(), want)


def formula(step, warmup, total, schedule, min_ratio):
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / (total - warmup))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return min_ratio + (1 - min_ratio) * (1 - p)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup,min_ratio", [(0, 0.0), (3, 0.1)])
def test_scheduler_lr_values(schedule, warmup, min_ratio):
    total, base = 10, 2e-3
    opt = build_optimizer(nn.Linear(2, 2), lr=base)
    sched = build_scheduler(opt, warmup, total, schedule, min_ratio)
    seen = []
    for _ in range(total + 2):  # past the end: stays at the floor
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [base * formula(k, warmup, total, schedule, min_ratio) for k in range(total + 2)]
    assert seen == pytest.approx(want, rel=1e-12)
    if warmup:
        assert seen[0] == pytest.approx(base / warmup) and seen[warmup] == pytest.approx(base)
    if schedule != "constant":
        assert seen[-1] == pytest.approx(base * min_ratio)


def test_scheduler_state_round_trip():
    opt = build_optimizer(nn.Linear(2, 2), lr=1.0)
    sched = build_scheduler(opt, 2, 8)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = build_optimizer(nn.Linear(2, 2), lr=1.0)
    sched2 = build_scheduler(opt2, 2, 8)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == pytest.approx([lr_multiplier(5, 2, 8)] * 2)


def test_clip_grad_norm():
    p1, p2 = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    p1.grad, p2.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert clip_grad_norm([p1, p2], None) == pytest.approx(5.0)
    assert p1.grad.tolist() == [3.0, 0.0]  # measure only
    assert clip_grad_norm([p1, p2], 1.0) == pytest.approx(5.0)
    assert p1.grad.tolist() == pytest.approx([0.6, 0.0], rel=1e-5) and p2.grad.item() == pytest.approx(
        0.8, 1e-5
    )


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"warmup_steps": 5, "total_steps": 3}, "warmup_steps"),
        ({"warmup_steps": 0, "total_steps": 3, "schedule": "step"}, "schedule"),
        ({"warmup_steps": 0, "total_steps": 3, "min_lr_ratio": 2.0}, "min_lr_ratio"),
    ],
)
def test_bad_schedule_config(kwargs, field):
    opt = build_optimizer(nn.Linear(2, 2), lr=1.0)
    with pytest.raises(ConfigError, match=field):
        build_scheduler(opt, **kwargs)
