"""The causal-LM objective of pretraining, SFT and distillation, for one micro-batch.

    loss = CE + w_mtp * mean_k CE_k  [+ sequence balance loss of MoE layers]  [+ w_kd * KL(teacher || student)]

CE_k is multi-token prediction depth k (position i predicts token i+k+1), weighted by the model's
`mtp_loss_weight`. Targets that cross a packed sample boundary are masked at every depth. Normalizers are
token counts of the whole optimizer step (`target_counts`), so micro-batches are weighted by tokens exactly as
one big batch would be.

Left out: loss on earlier MTP-depth hidden states from a pre-norm stream (the MTP modules take the final-normed
hidden states, as vLLM's DeepSeek MTP does).
"""

from __future__ import annotations

import torch
from pydantic import NonNegativeFloat, PositiveFloat

from r1kit.config import configclass
from r1kit.training.packing import Batch


@configclass(frozen=True)
class KDConfig:
    """Logit distillation (forward KL to the teacher at a temperature), for teachers sharing the tokenizer."""

    weight: NonNegativeFloat = 0.0  # 0 = off
    temperature: PositiveFloat = 1.0


NO_KD = KDConfig()


def mtp_depths(model, use_mtp: bool) -> int:
    return len(getattr(model, "mtp", [])) if use_mtp else 0


def target_counts(batches: list[Batch], depths: int) -> list[float]:
    """Number of scored targets over the step at depth 0 (next token) and each MTP depth k (token i+k+1)."""
    return [float(sum(b.target_mask(d + 1).sum().item() for b in batches)) for d in range(depths + 1)]


def lm_loss(model, batch: Batch, normalizers: list[float] | None = None, *, depths: int = 0, teacher=None,
            kd: KDConfig = NO_KD) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch and its parts (floats, each already divided by its normalizer).

    normalizers: targets per depth over the whole step (`target_counts`); None = this micro-batch's own
    counts (token means). depths: MTP depths to train (0 = none).
    """
    from r1kit.training.losses import cross_entropy_loss, kd_loss

    norms = normalizers or target_counts([batch], depths)
    ids = batch.input_ids  # (B, T)
    kwargs = batch.model_inputs()
    hidden = model.hidden(ids, **kwargs)  # (B, T, d)
    logits = model.lm_head(hidden)[:, :-1]  # (B, T-1, V): position i predicts ids[i+1]
    mask = batch.target_mask(1)
    ce = cross_entropy_loss(logits, ids[:, 1:], mask, normalizer=max(norms[0], 1.0))
    loss, parts = ce, {"ce": ce.item()}
    if depths:
        ce_k = [cross_entropy_loss(lg[:, :-1], ids[:, k + 1:], batch.target_mask(k + 1),  # lg: (B, T-k, V)
                                   normalizer=max(norms[k], 1.0))
                for k, lg in enumerate(model.mtp_logits(hidden, ids, **kwargs)[:depths], start=1)]
        mtp = torch.stack(ce_k).mean()
        loss = loss + model.config.mtp_loss_weight * mtp
        parts["mtp"] = mtp.item()
    aux = model.aux_loss() if hasattr(model, "aux_loss") else None
    if aux is not None:
        loss = loss + aux * (mask.sum().item() / max(norms[0], 1.0))  # token-weighted like the CE
        parts["aux"] = aux.item()
    if teacher is not None and kd.weight > 0:
        with torch.no_grad():
            t_logits = teacher(ids, **kwargs)[:, :-1]
        kl = kd_loss(logits, t_logits, mask, kd.temperature, normalizer=max(norms[0], 1.0))
        loss = loss + kd.weight * kl
        parts["kd"] = kl.item()
    return loss, parts
