"""Losses as small pure functions: tensors in, a scalar loss (and a metrics dict) out.

GRPO policy loss (DeepSeekMath eq. 3, R1 eq. 1), per completion token t of completion i:

    rho      = exp(logp - old_logp)
    l_t      = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i) + beta * k3_t
    k3_t     = exp(ref_logp - logp) - (ref_logp - logp) - 1        (k3 estimator of KL(pi || pi_ref))

The aggregation over tokens is the only difference between the loss types and is picked from
`AGGREGATIONS` by `loss_type`:

    grpo     mean over sequences of each sequence's token mean (DeepSeekMath)
    bnpo     token mean over the batch
    dr_grpo  token sum / (B * max_completion_length)                 (Dr. GRPO: no length bias)
    dapo     token sum / completion tokens of the batch                (DAPO)

"The batch" is always the whole optimizer step: a micro-batch's loss is its share of the step objective, with
the normalizers (`step_sequences`, `step_tokens`) counted over every micro-batch of the step, so summing
`.backward()` over the micro-batches gives the full-batch gradient however the step is cut (an uneven last
slice after dynamic sampling included). On one process bnpo and dapo therefore coincide; TRL's bnpo divides
each micro-batch by its own token count, which makes the objective depend on the cut.

Also here: `selective_log_softmax` (per-token log-prob of given ids without materializing the full
log-softmax), `entropy_from_logits`, SFT `cross_entropy_loss` with a loss mask, and logit distillation
`kd_loss` (forward KL at a temperature).

Left out: sequence-level importance sampling (GSPO), CISPO/SAPO/VESPO, entropy bonus, off-policy sequence
masking, the MTP loss combination (it belongs to the model's training loop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor

from r1kit.config import configclass

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


@configclass(frozen=True)
class GRPOLossConfig:
    """Options of the clipped-surrogate loss.

    epsilon_high defaults to epsilon_low (symmetric PPO clip); DAPO's clip-higher uses 0.2 / 0.28.
    tis_cap enables truncated importance sampling against the rollout engine's log-probs (see `grpo_loss`).
    unbiased_kl multiplies k3 by rho (DeepSeek-V3.2; TRL's `use_bias_correction_kl`), which changes only the
    gradient when rho == 1.
    """

    loss_type: LossType = "grpo"
    epsilon_low: Annotated[float, Field(ge=0, lt=1)] = 0.2
    epsilon_high: NonNegativeFloat | None = None
    beta: NonNegativeFloat = 0.0
    max_completion_length: PositiveInt | None = None  # dr_grpo's L; GRPOConfig sets it to max_new_tokens
    tis_cap: PositiveFloat | None = None
    unbiased_kl: bool = False

    def __post_init__(self) -> None:
        if self.epsilon_high is None:
            object.__setattr__(self, "epsilon_high", self.epsilon_low)


# --------------------------------------------------------------------------------------------- aggregation
# Each takes the masked per-token loss x [B, T] (zeros where mask is 0), the mask [B, T] (float), the config,
# and the step's completion count and token count; it returns this micro-batch's share of the step's loss.
Aggregation = Callable[[Tensor, Tensor, GRPOLossConfig, float, Tensor], Tensor]


def _aggregate_grpo(x: Tensor, mask: Tensor, cfg: GRPOLossConfig, sequences: float, tokens: Tensor) -> Tensor:
    return (x.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / sequences


def _aggregate_tokens(x: Tensor, mask: Tensor, cfg: GRPOLossConfig, sequences: float, tokens: Tensor) -> Tensor:
    return x.sum() / tokens.clamp(min=1.0)


def _aggregate_dr_grpo(x: Tensor, mask: Tensor, cfg: GRPOLossConfig, sequences: float, tokens: Tensor) -> Tensor:
    return x.sum() / (sequences * cfg.max_completion_length)


AGGREGATIONS: dict[str, Aggregation] = {
    "grpo": _aggregate_grpo,
    "bnpo": _aggregate_tokens,
    "dr_grpo": _aggregate_dr_grpo,
    "dapo": _aggregate_tokens,
}


# ----------------------------------------------------------------------------------------------- GRPO loss
def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def grpo_loss(
    logps: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    cfg: GRPOLossConfig,
    *,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    rollout_logps: Tensor | None = None,
    step_sequences: int | None = None,
    step_tokens: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped-surrogate GRPO loss of one micro-batch.

    Args:
        logps: [B, T] log-probs of the completion tokens under the current policy (with grad).
        advantages: [B] one advantage per completion (`group_advantages`), or [B, T] per token.
        completion_mask: [B, T] 1 for completion tokens that count, 0 for padding / masked (truncated) ones.
            Masked positions of every log-prob tensor must be finite.
        old_logps: [B, T] log-probs of the policy that sampled the rollout (num_iterations > 1). None means
            on-policy: old = logps.detach(), so rho == 1 in value but carries the policy gradient.
        ref_logps: [B, T] frozen reference log-probs; required iff cfg.beta > 0.
        rollout_logps: [B, T] log-probs reported by the rollout engine; with cfg.tis_cap set, each token's
            loss is weighted by min(exp(old - rollout), tis_cap) (truncated importance sampling), correcting
            for the engine/trainer mismatch.
        step_sequences: completions in the whole optimizer step (all its micro-batches); None = this batch's.
        step_tokens: counted completion tokens (mask sum) in the whole optimizer step; None = this batch's.

    Returns:
        (loss, metrics): loss is a scalar to call backward on; metrics are floats over this micro-batch's
        completion tokens: `kl` (when beta > 0), `clip_ratio/low`, `clip_ratio/high`, `clip_ratio/region`
        (fraction of tokens where the clip is active: rho < 1-eps_low with A < 0, rho > 1+eps_high with
        A > 0), `ratio/mean|min|max` of rho, `tis/mean` (when TIS is on) and `policy_loss` (this micro-batch's
        loss on its own, not its share of the step).
    """
    if logps.shape != completion_mask.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)} and completion_mask {tuple(completion_mask.shape)} differ"
        )
    if cfg.beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps")
    if cfg.tis_cap is not None and rollout_logps is None:
        raise ValueError("tis_cap is set but rollout_logps is None")
    if cfg.loss_type == "dr_grpo" and cfg.max_completion_length is None:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
    mask = completion_mask.to(logps.dtype)  # [B, T]
    adv = advantages.to(logps.dtype)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv  # [B, 1] or [B, T]
    old = logps.detach() if old_logps is None else old_logps

    ratio = torch.exp(logps - old)  # [B, T]
    clipped = ratio.clamp(1 - cfg.epsilon_low, 1 + cfg.epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # [B, T]
    if cfg.tis_cap is not None:
        tis = torch.exp(old.detach() - rollout_logps).clamp(max=cfg.tis_cap)
        per_token = per_token * tis
    if cfg.beta > 0:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + cfg.beta * (kl * ratio if cfg.unbiased_kl else kl)

    x = per_token * mask
    aggregate = AGGREGATIONS[cfg.loss_type]
    own_tokens = mask.sum()
    tokens = own_tokens if step_tokens is None else torch.as_tensor(step_tokens, dtype=x.dtype, device=x.device)
    loss = aggregate(x, mask, cfg, step_sequences or x.size(0), tokens)
    policy_loss = aggregate(x.detach(), mask, cfg, x.size(0), own_tokens)  # this micro-batch alone, for logging

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)

        def mean(t: Tensor) -> float:  # mean over completion tokens
            return ((t.to(mask.dtype) * mask).sum() / n).item()

        low = (ratio < 1 - cfg.epsilon_low) & (adv < 0)
        high = (ratio > 1 + cfg.epsilon_high) & (adv > 0)
        valid = completion_mask.bool()
        r = ratio[valid] if valid.any() else ratio.new_ones(1)
        metrics = {
            "policy_loss": policy_loss.item(),
            "clip_ratio/low": mean(low),
            "clip_ratio/high": mean(high),
            "clip_ratio/region": mean(low | high),
            "ratio/mean": r.mean().item(),
            "ratio/min": r.min().item(),
            "ratio/max": r.max().item(),
        }
        if cfg.beta > 0:
            metrics["kl"] = mean(kl)
        if cfg.tis_cap is not None:
            metrics["tis/mean"] = mean(tis)
    return loss, metrics


# -------------------------------------------------------------------------------------- log-probs, entropy
def selective_log_softmax(logits: Tensor, ids: Tensor, chunk_tokens: int = 1024) -> Tensor:
    """log softmax(logits)[..., ids] in float32, with the shape of `ids`.

    logits: [..., V]; ids: [...] (the same leading shape). Works `chunk_tokens` positions at a time, so the
    extra memory is one [chunk_tokens, V] float32 block instead of a full [B, T, V] log-softmax.
    """
    if logits.shape[:-1] != ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match ids {tuple(ids.shape)}")
    flat_logits, flat_ids = logits.reshape(-1, logits.size(-1)), ids.reshape(-1)
    out = []
    for lg, ix in zip(flat_logits.split(chunk_tokens), flat_ids.split(chunk_tokens)):
        lg = lg.float()  # [n, V]
        out.append(lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.cat(out).view(ids.shape)


def entropy_from_logits(logits: Tensor, chunk_tokens: int = 1024) -> Tensor:
    """Entropy (nats) of softmax(logits) over the last dim, in float32: [..., V] -> [...]."""
    out = []
    for lg in logits.reshape(-1, logits.size(-1)).split(chunk_tokens):
        logp = F.log_softmax(lg.float(), dim=-1)  # [n, V]
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out).view(logits.shape[:-1])


# ----------------------------------------------------------------------------------------- SFT, distillation
def _masked_token_mean(per_token: Tensor, mask: Tensor, normalizer: Tensor | float | None) -> Tensor:
    mask = mask.to(per_token.dtype)
    denom = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
    return (per_token * mask).sum() / denom


def cross_entropy_loss(
    logits: Tensor,
    targets: Tensor,
    loss_mask: Tensor | None = None,
    *,
    ignore_index: int = -100,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Next-token cross-entropy (nats per token) for pretraining and SFT.

    logits: [B, T, V] (position t predicts targets[:, t]; the caller shifts); targets: [B, T] token ids.
    A token counts where loss_mask is nonzero (e.g. assistant tokens only) and targets != ignore_index.
    Returns the mean over counted tokens, or their sum / `normalizer` (tokens over all micro-batches of a
    gradient-accumulation step, so that micro-batches of unequal size are weighted by tokens). With no
    counted token the loss is 0 (with a graph, so backward still works).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    keep = targets != ignore_index
    if loss_mask is not None:
        keep = keep & loss_mask.bool()
    safe_targets = targets.masked_fill(~keep, 0)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), safe_targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    return _masked_token_mean(nll, keep, normalizer)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Logit distillation: forward KL(p_teacher || p_student) per token, both softened by `temperature`.

    student_logits, teacher_logits: [B, T, V] over the same vocabulary; mask: [B, T] tokens that count.
    Per token: sum_v p_T(v) (log p_T(v) - log p_S(v)), with p = softmax(logits / temperature); the masked
    token mean (or sum / normalizer) is multiplied by temperature**2 so that gradient magnitudes do not
    shrink as the temperature grows (Hinton et al., 2015). The teacher gets no gradient.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; logit distillation needs a shared tokenizer"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # [B, T]
    if mask is None:
        mask = torch.ones_like(kl)
    return _masked_token_mean(kl, mask, normalizer) * temperature**2
