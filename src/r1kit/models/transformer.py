"""The decoder-only transformer: DeepSeek-V3 (MLA + MoE + MTP) and the dense Qwen2/Llama students.

Variants are chosen when a block is built (MLA or GQA by `arch`, dense MLP or MoE by layer id); `forward` stays
straight. Module names follow Hugging Face checkpoints (minus the leading "model."), so loading is a copy.

Entry points:
- `model(input_ids)` -> logits (B, T, V): the full-sequence forward used for training and scoring.
- `model.hidden(...)` -> final-normed hidden states; `model.lm_head(h)` -> logits; `model.mtp_logits(h, ids)`.
- `model.setup_cache(B, S)` then `model.forward_cached(ids, cache_pos, kv_len=...)` for generation.

Left out: tensor/expert parallelism (use torch.distributed FSDP2 around this module) and dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from r1kit.models.attention import GQA, MLA, AttentionContext, RMSNorm
from r1kit.models.config import ModelConfig
from r1kit.models.linear import Linear
from r1kit.models.moe import MLP, MoE
from r1kit.models.rope import rope_tables


class Block(nn.Module):
    def __init__(self, layer_id: int, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MLA(cfg) if cfg.is_mla else GQA(cfg)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_id) else MLP(cfg.dim, cfg.inter_dim)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, seq_ids: torch.Tensor | None = None) -> torch.Tensor:
        """seq_ids: (B, T) sequence ids for MoE balance statistics (0 = padding), see `MoE.forward`."""
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x), seq_ids)


class MTPModule(nn.Module):
    """One multi-token-prediction depth: h' = Block(eh_proj([RMSNorm(Emb(t_{i+1})); RMSNorm(h_i)])).

    The embedding and output head are the main model's (shared); `norm` is the depth's own final norm."""

    def __init__(self, layer_id: int, cfg: ModelConfig):
        super().__init__()
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.eh_proj = Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.block = Block(layer_id, cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, h: torch.Tensor, next_emb: torch.Tensor, ctx: AttentionContext,
                seq_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(next_emb), self.hnorm(h)], dim=-1))
        return self.block(x, ctx, seq_ids)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(i, cfg) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.mtp = nn.ModuleList(MTPModule(cfg.n_layers + k, cfg) for k in range(cfg.n_mtp_layers))
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, d_rope/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.cache_batch = self.cache_len = 0
        self.cache_mtp = False
        if self.embed_tokens.weight.device.type != "meta":
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module, std: float = 0.02) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "gate_up_proj"):
            nn.init.normal_(module.gate_up_proj, std=std)
            nn.init.normal_(module.down_proj, std=std)
        elif hasattr(module, "e_score_correction_bias"):
            nn.init.normal_(module.weight, std=std)

    # ---- full-sequence forward (training, scoring) --------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V). Keyword arguments as for `hidden`."""
        return self.lm_head(self.hidden(input_ids, **kwargs))

    def hidden(
        self,
        input_ids: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_pre_norm: bool = False,
    ) -> torch.Tensor:
        """Final-normed hidden states (B, T, d) of a full sequence under causal attention.

        positions: (B, T) RoPE positions (default 0..T-1; with packing, restart per sample).
        segment_ids: (B, T) sample id of each token for packed sequences (1, 2, ...; 0 = padding): attention
            stays within a sample.
        attention_mask: (B, T) 1 for real tokens, 0 for padding (left or right): positions count real tokens only.
        MoE balance statistics (training) count only real tokens: those with attention_mask 1 and segment id != 0
        (packing pads with segment 0); each packed sample is its own sequence of the sequence-wise loss.
        """
        ctx = self._full_context(input_ids, positions, segment_ids, attention_mask)
        seq_ids = self._sequence_ids(segment_ids, attention_mask)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, ctx, seq_ids)
        return h if output_pre_norm else self.norm(h)

    def _full_context(self, input_ids, positions=None, segment_ids=None, attention_mask=None) -> AttentionContext:
        """Rotary angles and the attention mask of a full-sequence forward (None mask = plain causal)."""
        B, T = input_ids.shape
        device = input_ids.device
        mask = None
        if attention_mask is not None:
            keep = attention_mask.bool()
            if positions is None:
                positions = (keep.long().cumsum(dim=1) - 1).clamp(min=0)
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=device)  # a pad query attends to itself: no NaN
            mask = ((causal & keep[:, None, :]) | eye).unsqueeze(1)
        if segment_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            mask = (causal & same).unsqueeze(1) if mask is None else mask & same.unsqueeze(1)
        if positions is None:
            positions = torch.arange(T, device=device).expand(B, T)
        return AttentionContext(self.rope_cos[positions], self.rope_sin[positions], mask=mask)

    def mtp_logits(self, hidden: torch.Tensor, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                   segment_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Logits of each MTP depth k = 1..D: entry k-1 has shape (B, T-k, V) and predicts token i+k+1 at i.

        hidden: the main model's final-normed hidden states (B, T, d); positions/segment_ids/attention_mask as
        for `hidden` (packed rows keep each depth's attention inside its sample). MoE balance statistics of a
        depth count position i only when tokens i and i+k are real and of the same sample."""
        outs, h = [], hidden
        seq_ids = self._sequence_ids(segment_ids, attention_mask)
        for k, module in enumerate(self.mtp, start=1):
            T = input_ids.shape[1] - k
            first_T = [None if t is None else t[:, :T] for t in (positions, segment_ids, attention_mask)]
            ctx = self._full_context(input_ids[:, :T], *first_T)
            seq_k = None if seq_ids is None else seq_ids[:, :T] * (seq_ids[:, k:] == seq_ids[:, :T])
            h = module(h[:, :T], self.embed_tokens(input_ids[:, k:]), ctx, seq_k)
            outs.append(self.lm_head(module.norm(h)))
        return outs

    @staticmethod
    def _sequence_ids(segment_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T) ids for MoE balance statistics: the segment id (1 without packing), 0 where attention_mask is 0."""
        if attention_mask is None:
            return segment_ids
        ones = torch.ones_like(attention_mask, dtype=torch.long)
        return (ones if segment_ids is None else segment_ids.long()) * (attention_mask != 0)

    # ---- cached forward (generation) ----------------------------------------------------------------------------

    def setup_cache(self, max_batch: int, max_seq_len: int, dtype: torch.dtype | None = None, *,
                    mtp: bool = False) -> None:
        """Allocate every layer's KV cache once, at full size; later forwards write into it by position.

        mtp: also the first MTP depth's block (speculative decoding drafts with it, see `forward_mtp_cached`)."""
        if max_seq_len > self.config.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} exceeds the model's max_seq_len {self.config.max_seq_len}")
        if (max_batch, max_seq_len, mtp) == (self.cache_batch, self.cache_len, self.cache_mtp):
            return
        dtype, device = dtype or self.embed_tokens.weight.dtype, self.embed_tokens.weight.device
        for layer in self.layers:
            layer.self_attn.setup_cache(max_batch, max_seq_len, dtype, device)
        for k, module in enumerate(self.mtp):
            if mtp and k == 0:
                module.block.self_attn.setup_cache(max_batch, max_seq_len, dtype, device)
            else:
                for name in ("cache_kv", "cache_pe", "cache_k", "cache_v"):
                    if hasattr(module.block.self_attn, name):
                        setattr(module.block.self_attn, name, None)
        self.cache_batch, self.cache_len, self.cache_mtp = max_batch, max_seq_len, mtp

    def _attention_caches(self) -> list[torch.Tensor]:
        """Every cache tensor (B_max, S, ...): the layers' (MLA: c_KV and k_pe; GQA: K and V), then the MTP blocks'."""
        blocks = [*self.layers, *(m.block for m in self.mtp)]
        return [c for b in blocks if b.self_attn.cache_ready() for c in b.self_attn.caches()]

    def move_cache_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cache slots of row `src` into row `dst`, in every layer."""
        for cache in self._attention_caches():
            cache[dst, :length] = cache[src, :length]

    def swap_cache_rows(self, a: int, b: int, length: int) -> None:
        """Exchange the first `length` cache slots of rows a and b, in every layer."""
        for cache in self._attention_caches():
            cache[[a, b], :length] = cache[[b, a], :length]  # the right side is gathered (a copy) first

    def copy_cache_rows(self, src: int, dst: torch.Tensor, length: int) -> None:
        """Copy the first `length` cache slots of row `src` into each row of `dst` (R,): a shared prompt prefix."""
        for cache in self._attention_caches():
            cache[dst, :length] = cache[src, :length]

    def forward_cached(
        self,
        input_ids: torch.Tensor,
        cache_pos: torch.Tensor,
        *,
        kv_len: int,
        cache_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run new tokens (B, T) at cache positions (B, T) and return final-normed hidden states (B, T, d).

        Token t of row b is written to slot cache_pos[b, t] and attends to slots 0..cache_pos[b, t]; the caller
        keeps every row's earlier slots filled (prompts right-padded, so padding is overwritten later)."""
        ctx = self._cached_context(cache_pos, kv_len, cache_rows)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, ctx)
        return self.norm(h)

    def forward_mtp_cached(self, hidden: torch.Tensor, next_ids: torch.Tensor, cache_pos: torch.Tensor, *,
                           kv_len: int, cache_rows: torch.Tensor | None = None) -> torch.Tensor:
        """The first MTP depth over its own cache (`setup_cache(mtp=True)`): final-normed states (B, T, d).

        hidden: the main model's final-normed states (B, T, d) at cache_pos; next_ids (B, T): the token after each
        position. `lm_head` of the result at position i predicts token i + 2 (a draft for speculative decoding)."""
        module = self.mtp[0]
        ctx = self._cached_context(cache_pos, kv_len, cache_rows)
        return module.norm(module(hidden, self.embed_tokens(next_ids), ctx))

    def _cached_context(self, cache_pos: torch.Tensor, kv_len: int, cache_rows: torch.Tensor | None):
        slots = torch.arange(kv_len, device=cache_pos.device)
        mask = (slots[None, None, :] <= cache_pos[:, :, None]).unsqueeze(1)  # (B, 1, T, S)
        return AttentionContext(self.rope_cos[cache_pos], self.rope_sin[cache_pos], mask=mask,
                                cache_pos=cache_pos, cache_rows=cache_rows, kv_len=kv_len)

    # ---- MoE training hooks --------------------------------------------------------------------------------------

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the sequence-wise balance losses of the last training forward (None for dense models)."""
        losses = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def update_router_biases(self, apply: bool = True) -> torch.Tensor | None:
        """Apply the auxiliary-loss-free bias update in every MoE layer (apply=False: only measure);
        returns the load fractions since the last call, (L_moe, E)."""
        loads = [m.update_bias(apply) for m in self.moe_layers()]
        return torch.stack(loads) if loads else None
