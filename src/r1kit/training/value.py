"""The PPO critic and its loss, for the GRPO-vs-PPO comparison (GRPO needs neither).

`ValueModel` is an r1kit Transformer backbone with a scalar head `nn.Linear(dim, 1)` on the final-normed
hidden states: one value per token. `value_loss` is PPO2's clipped value loss (as in TRL's PPO trainer):

    L = 0.5 * masked_mean(max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2))

Left out: separate value/policy heads on one shared backbone (the critic here is its own model, as in
TRL and the InstructGPT setup), return normalization, and value bootstrapping of truncated completions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from r1kit.models.transformer import Transformer


class ValueModel(nn.Module):
    """Critic: values [B, T] = value_head(backbone.hidden(input_ids)).

    The backbone's token-predicting parts are dropped: the LM head when it is not tied to the embedding,
    and the MTP modules. The head starts at zero (every value 0 at first, as in OpenAI's lm-human-preferences),
    so the critic learns the scale of the returns instead of starting from a random guess.
    """

    def __init__(self, backbone: Transformer):
        super().__init__()
        if not backbone.config.tie_embeddings:
            backbone.lm_head = nn.Identity()
        backbone.mtp = nn.ModuleList()
        self.backbone = backbone
        weight = backbone.embed_tokens.weight
        self.value_head = nn.Linear(backbone.config.dim, 1, device=weight.device, dtype=weight.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_source(cls, src, dtype: torch.dtype | None = None, device=None, seed: int = 0) -> ValueModel:
        """A critic whose backbone is `r1kit.load_model(src, dtype, device, seed)` (often the policy's source)."""
        from r1kit.models.checkpoint import load_model

        return cls(load_model(src, dtype=dtype, device=device, seed=seed))

    def forward(self, input_ids: Tensor, **hidden_kwargs) -> Tensor:
        """input_ids [B, T] -> float32 values [B, T]; value t is V(state after tokens 0..t).

        Keyword arguments go to `Transformer.hidden` (attention_mask, positions, segment_ids). For a
        left-padded prompt of length P followed by completion tokens, `values[:, P-1:-1]` are the values of the
        states in which each completion token is chosen -- the same positions as the policy's log-probs.
        """
        h = self.backbone.hidden(input_ids, **hidden_kwargs)  # [B, T, d]
        return self.value_head(h).squeeze(-1).float()  # [B, T]


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float | None = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """PPO2's clipped value loss over the masked tokens.

    Args:
        values: [B, T] current critic values (with grad); old_values: [B, T] the critic's values at rollout
            time; returns: [B, T] targets R (e.g. from `advantages.gae`); mask: [B, T] 1 for tokens that count.
        clip_range: c, how far a value may move from old_values before its loss stops decreasing; None turns
            clipping off (plain 0.5 * masked mean squared error).

    Returns:
        (loss, metrics): loss = 0.5 * masked mean of max((v - R)^2, (clip(v, old - c, old + c) - R)^2), a
        scalar. metrics: `value_loss`; `value_clip_fraction`, the fraction of tokens where the clipped term
        is the larger (so the gradient is cut); `explained_variance`, 1 - Var[R - v] / Var[R] over the masked
        tokens with v = `values` (population variances; 0.0 when Var[R] is 0); `values/mean`, `returns/mean`.
    """
    if not values.shape == old_values.shape == returns.shape == mask.shape:
        raise ValueError(f"values {tuple(values.shape)}, old_values {tuple(old_values.shape)}, returns "
                         f"{tuple(returns.shape)} and mask {tuple(mask.shape)} must have the same shape")
    m = mask.to(values.dtype)
    n = m.sum().clamp(min=1.0)
    old, R = old_values.detach().to(values.dtype), returns.detach().to(values.dtype)
    unclipped = (values - R) ** 2  # [B, T]
    if clip_range is None:
        per_token, clipped_larger = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clipped = old + (values - old).clamp(-clip_range, clip_range)
        clipped = (v_clipped - R) ** 2
        per_token, clipped_larger = torch.maximum(unclipped, clipped), clipped > unclipped
    loss = 0.5 * (per_token * m).sum() / n

    with torch.no_grad():
        def mean(t: Tensor) -> Tensor:
            return (t.to(m.dtype) * m).sum() / n

        v = values.detach()
        var_r = mean((R - mean(R)) ** 2)
        err = R - v
        var_err = mean((err - mean(err)) ** 2)
        explained = 1.0 - var_err / var_r if var_r > 0 else torch.zeros(())
        metrics = {
            "value_loss": loss.item(),
            "value_clip_fraction": mean(clipped_larger).item(),
            "explained_variance": float(explained),
            "values/mean": mean(v).item(),
            "returns/mean": mean(R).item(),
        }
    return loss, metrics
