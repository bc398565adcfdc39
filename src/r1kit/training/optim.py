"""AdamW with decoupled weight decay on matrices only, learning-rate schedules, gradient clipping.

Weight decay applies to parameters with >= 2 dims that do not belong to an `nn.Embedding`; norms' gains,
biases and embeddings (and a head tied to them) are not decayed (as in nanoGPT / DeepSeek). Parameters with
`requires_grad=False` (frozen parts) are left out of the optimizer; buffers such as the MoE router's fp32
balance bias are not parameters and are updated by the training loop, not by AdamW.

Schedules are a pure function of the optimizer step, `lr_multiplier`, wrapped in a `LambdaLR`; the lr used by
optimizer step k (0-based, before the k-th `scheduler.step()`) is `base_lr * lr_multiplier(k, ...)`.

Under FSDP2 the parameters are DTensor shards: AdamW updates each rank's shard (the optimizer state is
sharded with them) and `clip_grad_norm` measures the norm over all shards. On CUDA AdamW is fused.

Left out: ZeRO-1/2 without sharded parameters, Muon, layer-wise lr decay, warm restarts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from r1kit.errors import ConfigError

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


def decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters, each listed once (tied weights included once)."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() de-duplicates tied weights
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_params else no_decay).append(p)
    return decay, no_decay


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters: group 0 decayed, group 1 not. fused: one kernel per step
    (CUDA parameters)."""
    if lr <= 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    if not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"betas must be in [0, 1), got {betas}")
    decay, no_decay = decay_groups(model)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **({"fused": True} if fused else {}))


def lr_multiplier(
    step: int, warmup_steps: int, total_steps: int, schedule: Schedule = "cosine", min_lr_ratio: float = 0.0
) -> float:
    """Factor on the base lr at optimizer step `step` (0-based).

    Linear warmup (step+1)/warmup_steps over the first warmup_steps steps (so step 0 already moves), then
    with p = (step - warmup_steps) / (total_steps - warmup_steps) clamped to [0, 1]:
    cosine min + (1 - min)(1 + cos(pi p))/2, linear min + (1 - min)(1 - p), constant 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * p)) if schedule == "cosine" else 1.0 - p
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    schedule: Schedule = "cosine",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A LambdaLR following `lr_multiplier`; call `scheduler.step()` once after each `optimizer.step()`."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps < 0 or total_steps < 1:
        raise ConfigError(
            f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps} and {total_steps}"
        )
    if warmup_steps > total_steps:
        raise ConfigError(f"warmup_steps ({warmup_steps}) exceeds total_steps ({total_steps})")
    if not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, schedule, min_lr_ratio)
    )


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float | None) -> float:
    """Clip the global L2 gradient norm to max_norm (None or <= 0: measure only); returns the norm before.

    Sharded (DTensor) gradients: the norm is over every shard of every rank (a collective: all ranks call it
    with the same parameters), and every rank scales its shards by the same factor."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm is not None and max_norm > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if hasattr(norm, "full_tensor"):  # a DTensor (partial norms of the shards): the reduced total
        norm = norm.full_tensor()
    return norm.item()
