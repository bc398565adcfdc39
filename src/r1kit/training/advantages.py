"""Advantages: group-relative for GRPO (DeepSeekMath §4.1.2), DAPO's dynamic-sampling filter, and GAE for PPO.

Rewards come in group-major order: the G completions of question q occupy `rewards[q*G:(q+1)*G]` (or row q
of a [B, G] tensor). Every token of completion i gets the same advantage

    A_i = (r_i - mean(r_group)) / (std + eps)

where std is the group's std (`scale_rewards="group"`, R1/DeepSeekMath), the std of the whole batch
(`"batch"`, as TRL does; more robust when a group's rewards are nearly equal), or no division at all
(`"none"`, Dr. GRPO). Stds are unbiased (Bessel-corrected), as in TRL.

PPO, the baseline GRPO replaced, uses a critic instead of the group: `gae` (generalized advantage estimation
over per-token rewards, γ and λ), `terminal_rewards` (an outcome reward on each reply's last token) and
`masked_whiten`.

Left out: process rewards for GRPO, multi-objective "normalize then sum" aggregation, NaN (unscorable)
rewards -- the caller replaces or drops those before calling in here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """View rewards as [num_groups, G], checking the shape contract."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() == 2:
        if rewards.size(1) != group_size:
            raise ValueError(f"rewards has shape {tuple(rewards.shape)} but group_size is {group_size}")
        return rewards
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be [B*G] or [B, G]; got shape {tuple(rewards.shape)} with group_size {group_size}"
        )
    return rewards.view(-1, group_size)


def _unbiased_std(x: Tensor, dim: int | None = None) -> Tensor:
    """Bessel-corrected std; 0 (not NaN) when there is a single sample, so that it never divides by NaN."""
    n = x.numel() if dim is None else x.size(dim)
    if n < 2:
        return torch.zeros_like(x.mean() if dim is None else x.mean(dim))
    return x.std() if dim is None else x.std(dim)


def group_advantages(
    rewards: Tensor, group_size: int, scale_rewards: ScaleRewards = "group", eps: float = 1e-4
) -> Tensor:
    """Advantages, one per completion, in the same shape as `rewards` ([B*G] or [B, G]), float32 or wider."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    r = _grouped(rewards, group_size)
    r = r.to(torch.promote_types(r.dtype, torch.float32))  # ints and half precision -> float32
    adv = r - r.mean(dim=1, keepdim=True)  # [B, G]
    if scale_rewards == "group":
        adv = adv / (_unbiased_std(r, dim=1).unsqueeze(1) + eps)
    elif scale_rewards == "batch":
        adv = adv / (_unbiased_std(r) + eps)
    return adv.reshape(rewards.shape)


def keep_informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling: bool [num_groups], True where the group's rewards are not all equal.

    A group whose completions all got the same reward has zero advantage everywhere and so contributes no
    policy gradient (only KL); DAPO drops such groups and samples more questions to refill the batch.
    """
    r = _grouped(rewards, group_size)
    return r.amax(dim=1) > r.amin(dim=1)


def zero_std_mask(rewards: Tensor, group_size: int) -> Tensor:
    """bool [num_groups], True where every completion of the group got the same reward."""
    return ~keep_informative_groups(rewards, group_size)


def zero_std_fraction(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups with zero reward std (no learning signal) -- the metric `frac_zero_std`."""
    return zero_std_mask(rewards, group_size).float().mean().item()


# ------------------------------------------------------------------------------ PPO (per-token) advantages
def terminal_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """Per-token rewards [B, T] that are 0 everywhere except `scores[b]` at row b's last real token.

    scores: [B] one reward per completion; mask: [B, T] right-padded (1 for real tokens, then 0). A row with
    no real token gets no reward. Add per-token terms (e.g. -beta * KL) to the result for RLHF-style PPO.
    """
    lengths = mask.long().sum(dim=1)  # [B]
    out = torch.zeros(mask.shape, dtype=torch.promote_types(scores.dtype, torch.float32), device=mask.device)
    rows = (lengths > 0).nonzero().squeeze(1)
    out[rows, lengths[rows] - 1] = scores[rows].to(out.dtype)
    return out


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al., 2016) over right-padded token sequences.

        delta_t = r_t + gamma * V_{t+1} - V_t,    A_t = delta_t + gamma * lam * A_{t+1},    R_t = A_t + V_t

    where V_{t+1} and A_{t+1} are 0 after a row's last real token (the terminal: a truncated completion is
    treated as ended too; bootstrapping it is left out).

    Args:
        rewards: [B, T] per-token rewards (see `terminal_rewards`); values: [B, T] the critic's V(s_t) for the
            state before token t is chosen (no gradient flows through them); mask: [B, T] 1 for real tokens,
            then 0 (right padding; a 0 followed by a 1 is an error).

    Returns:
        (advantages, returns), both [B, T] float32 or wider, 0 at padded positions.
    """
    if not rewards.shape == values.shape == mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must be the same [B, T]")
    m = mask.to(torch.promote_types(values.dtype, torch.float32))
    if (m[:, 1:] > m[:, :-1]).any():
        raise ValueError("mask must be right-padded: 1s then 0s in every row")
    r, v = rewards.detach().to(m.dtype) * m, values.detach().to(m.dtype) * m  # [B, T], 0 on padding
    adv = torch.zeros_like(m)
    next_value, next_adv = torch.zeros_like(m[:, 0]), torch.zeros_like(m[:, 0])  # [B]: 0 past the end
    for t in reversed(range(m.size(1))):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv[:, t] = (delta + gamma * lam * next_adv) * m[:, t]
        next_value, next_adv = v[:, t], adv[:, t]
    return adv, (adv + v) * m


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the masked tokens (PPO's advantage whitening), 0 at padding.

    Mean and variance are over positions where mask is 1; the variance is Bessel-corrected, as in TRL.
    shift_mean=False keeps the mean (PPO whitens rewards that way). Needs >= 2 masked tokens.
    """
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n
    var = ((x - mean) ** 2 * m).sum() / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * m
