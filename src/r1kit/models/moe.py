"""Feed-forward layers: the SwiGLU MLP and DeepSeek-V3's mixture of experts.

MoE = routed experts (top-k of `n_routed_experts`, group-limited) + always-on shared experts.
- Gate: sigmoid (V3) or softmax (V2) affinities s; selection uses s + b, where b is a per-expert fp32 bias that
  only steers selection (auxiliary-loss-free balancing); the mixing weights use s, normalized, times route_scale.
- Routed experts are stored stacked (HF transformers 5 layout: gate_up_proj [E, 2I, d], down_proj [E, d, I]) and
  computed with one grouped matmul over the tokens sorted by expert: no per-expert Python loop, no dense compute.
- Training-time balancing: `expert_load` counts tokens per expert between bias updates; `update_bias()` applies
  the V3 rule b_i += gamma * sign(mean_load - load_i); `aux_loss` holds the sequence-wise balance loss
  alpha * sum_i f_i P_i of the last forward (V3 paper eq. 17-20). Both count real tokens only: `seq_ids`
  (B, T) marks padding 0 and gives each packed sample its own id, so each sample is one "sequence" of the loss.

Left out: expert parallelism and capacity-based token dropping (no token is ever dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r1kit.models.config import ModelConfig
from r1kit.models.linear import Linear


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.gate_proj = Linear(dim, inter_dim, bias=False)  # w1
        self.up_proj = Linear(dim, inter_dim, bias=False)  # w3
        self.down_proj = Linear(inter_dim, dim, bias=False)  # w2

    def forward(self, x: torch.Tensor, seq_ids: torch.Tensor | None = None) -> torch.Tensor:
        """seq_ids: ignored (a dense layer keeps no routing statistics); accepted so every block's
        feed-forward layer is called the same way."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Group-limited top-k router."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.topk, self.n_groups, self.topk_groups = cfg.n_activated_experts, cfg.n_expert_groups, cfg.n_limited_groups
        self.score_func, self.route_scale, self.norm_topk_prob = cfg.score_func, cfg.route_scale, cfg.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def _apply(self, fn, recurse=True):
        """Keep the selection bias fp32 through `model.to(dtype)`: its updates are tiny steps."""
        bias = self.e_score_correction_bias
        super()._apply(fn, recurse)
        self.e_score_correction_bias = bias.to(self.e_score_correction_bias.device)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (N, d). Returns mixing weights (N, k) fp32, expert ids (N, k), affinities s (N, E) fp32."""
        logits = F.linear(x.float(), self.weight.float())  # routing in fp32, as the reference does
        scores = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)
        biased = scores + self.e_score_correction_bias  # bias steers selection only
        if self.n_groups > 1:
            grouped = biased.view(x.shape[0], self.n_groups, -1)  # (N, G, E/G)
            if self.score_func == "sigmoid":
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            else:
                group_scores = grouped.amax(dim=-1)
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(self.topk_groups, dim=-1).indices, True)
            biased = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(1)
        indices = biased.topk(self.topk, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.route_scale, indices, scores


class Experts(nn.Module):
    """The routed experts, stacked, computed as grouped matmuls over tokens sorted by expert."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, d, inter = cfg.n_routed_experts, cfg.dim, cfg.moe_inter_dim
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * inter, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, inter))

    # Eager under torch.compile (a compiled decode step breaks the graph here): torch 2.13's fake-tensor rule for
    # F.grouped_mm on the CPU accepts bf16 only, while eager runs it in fp32 too.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor):
        """x (N, d), weights/indices (N, k), counts (E,) tokens per expert. Returns (N, d)."""
        k = indices.shape[1]
        order = indices.flatten().argsort(stable=True)  # token-slots sorted by expert
        token_of = order // k
        offsets = counts.cumsum(0).to(torch.int32)
        xs = x[token_of]  # (N*k, d), grouped by expert
        gate, up = F.grouped_mm(xs, self.gate_up_proj.transpose(1, 2), offs=offsets).chunk(2, dim=-1)
        ys = F.grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), offs=offsets)  # (N*k, d)
        ys = ys * weights.flatten()[order].unsqueeze(1).to(ys.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, ys)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.topk = cfg.n_routed_experts, cfg.n_activated_experts
        self.bias_update_speed, self.seq_aux_alpha = cfg.bias_update_speed, cfg.seq_aux_alpha
        self.gate = Gate(cfg)
        self.experts = Experts(cfg)
        self.shared_experts = MLP(cfg.dim, cfg.moe_inter_dim * cfg.n_shared_experts) if cfg.n_shared_experts else None
        self.register_buffer("expert_load", torch.zeros(cfg.n_routed_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None

    def _apply(self, fn, recurse=True):
        """Keep the load counts fp32 through `model.to(dtype)`: bf16 cannot count past 256 exactly."""
        load = self.expert_load
        super()._apply(fn, recurse)
        self.expert_load = load.to(self.expert_load.device)
        return self

    def forward(self, x: torch.Tensor, seq_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). Every token is computed; in training, balance statistics count real tokens.

        seq_ids: (B, T) sequence id of each token for the balance statistics: 0 = padding (not counted), and a
        row's tokens with the same id form one sequence (packed samples). None = every token real, one
        sequence per row."""
        B, T, d = x.shape
        flat = x.reshape(-1, d)
        weights, indices, scores = self.gate(flat)
        slots = indices.flatten()  # tokens per expert, without bincount's device-to-host sync on CUDA
        counts = slots.new_zeros(self.n_experts).index_add_(0, slots, torch.ones_like(slots))
        out = self.experts(flat, weights, indices, counts)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        if self.training:
            real, seq = balance_groups(seq_ids, B, T, x.device)  # (N,), (N,)
            real_slots = real.repeat_interleave(self.topk)  # (N*k,): one per routed token-slot
            self.expert_load.index_add_(0, indices.flatten(), real_slots.to(self.expert_load.dtype))
            self.aux_loss = self._sequence_balance_loss(scores, indices, real, seq) if self.seq_aux_alpha > 0 else None
        return out.view(B, T, d)

    def _sequence_balance_loss(self, scores: torch.Tensor, indices: torch.Tensor, real: torch.Tensor,
                               seq: torch.Tensor) -> torch.Tensor:
        """alpha * mean over sequences of sum_i f_i P_i, over each sequence's T real tokens:
        f_i = E/(k T) * #tokens routed to i, P_i = mean_t s'_i (s' = s / sum s). Sequences index rows of
        (N, E) accumulators (at most N sequences); empty ones are left out of the mean."""
        N, E, k = scores.shape[0], self.n_experts, self.topk
        probs = scores / scores.sum(dim=-1, keepdim=True)  # s': (N, E)
        tokens = torch.zeros(N, device=scores.device).index_add_(0, seq, real)  # T per sequence
        p = torch.zeros(N, E, device=scores.device).index_add_(0, seq, probs * real[:, None])  # (N, E)
        hits = torch.zeros(N, E, device=scores.device).index_put_(
            (seq.repeat_interleave(k), indices.flatten()), real.repeat_interleave(k), accumulate=True)
        denom = tokens.clamp(min=1)[:, None]
        per_seq = ((hits * E / (k * denom)) * (p / denom)).sum(dim=-1)  # (N,)
        present = (tokens > 0).float()
        return self.seq_aux_alpha * (per_seq * present).sum() / present.sum().clamp(min=1)

    @torch.no_grad()
    def update_bias(self, apply: bool = True) -> torch.Tensor:
        """Auxiliary-loss-free balancing step: raise the bias of underloaded experts, lower overloaded ones.

        Returns the load fraction per expert since the last update (for logging), then resets the counts.
        apply=False only measures (post-training keeps the bias frozen, as DeepSeek-V3 ends pretraining)."""
        load = self.expert_load
        if apply and load.sum() > 0:
            self.gate.e_score_correction_bias += self.bias_update_speed * torch.sign(load.mean() - load)
        fraction = load / load.sum().clamp(min=1)
        self.expert_load.zero_()
        return fraction


def balance_groups(seq_ids: torch.Tensor | None, B: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens balance statistics count, and the sequence of each: real (N,) fp32 1/0 and seq (N,) int64
    in [0, N), N = B*T. Runs of real tokens sharing an id in a row form one sequence (padding in between
    does not split it); no host sync."""
    if seq_ids is None:
        return torch.ones(B * T, device=device), torch.arange(B, device=device).repeat_interleave(T)
    real = seq_ids != 0  # (B, T)
    t = torch.arange(T, device=device).expand(B, T)
    last = torch.where(real, t, -1).cummax(dim=1).values  # latest real position at or before t
    prev = torch.cat([torch.full((B, 1), -1, device=device), last[:, :-1]], dim=1)  # ... strictly before t
    prev_id = seq_ids.gather(1, prev.clamp(min=0))
    starts = real & ((prev < 0) | (prev_id != seq_ids))  # first real token of a sequence
    seq = starts.flatten().long().cumsum(0).sub(1).clamp(min=0)
    return real.flatten().float(), seq
