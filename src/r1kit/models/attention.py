"""Attention: Multi-head Latent Attention (DeepSeek-V2/V3) and grouped-query attention (Llama, Qwen2).

Both run in two modes, chosen by the `AttentionContext` the model builds once per forward:
- full sequence (training, scoring): no cache; MLA uses the naive form (keys/values expanded per head),
  which is the cheaper form when every position is a query.
- cached (generation): the new tokens are written into a preallocated cache at their positions, then attended
  against the first `kv_len` cache entries. MLA uses the absorbed form: W_UK is folded into the query and W_UV
  into the output, so the cache holds only the normalized latent c_KV and the shared RoPE key k_pe per token.

Left out: FlashMLA/paged kernels and FP8; the cache is one dense tensor per layer (gpt-fast style).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from r1kit.models.config import ModelConfig
from r1kit.models.linear import Linear
from r1kit.models.rope import apply_rope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused kernel
        normed = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps)
        return self.weight * normed.type_as(x)  # normalize in fp32, scale in the model dtype (as HF does)


@dataclass
class AttentionContext:
    """Per-forward inputs shared by every attention layer.

    cos, sin: (B, T, d_rope/2) rotation angles of the T new tokens.
    mask: bool, True = may attend. Full mode: (B, 1, T, T) or None for plain causal. Cached mode: (B, 1, T, kv_len).
    cache_pos: (B, T) cache slots the new tokens are written to; None in full mode.
    cache_rows: (B,) cache rows of the batch; None = rows 0..B-1.
    kv_len: number of cache positions attended to.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None
    cache_pos: torch.Tensor | None = None
    cache_rows: torch.Tensor | None = None
    kv_len: int = 0

    @property
    def cached(self) -> bool:
        return self.cache_pos is not None


def _write_and_read(cache: torch.Tensor, new: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
    """Write new (B, T, ...) into cache (B_max, S, ...) at ctx.cache_pos and return the first kv_len slots."""
    if ctx.cache_rows is None:
        rows = torch.arange(new.shape[0], device=new.device)
        cache[rows[:, None], ctx.cache_pos] = new.to(cache.dtype)
        return cache[: new.shape[0], : ctx.kv_len]
    cache[ctx.cache_rows[:, None], ctx.cache_pos] = new.to(cache.dtype)
    return cache[ctx.cache_rows, : ctx.kv_len]


class MLA(nn.Module):
    """Multi-head Latent Attention. Weight names follow the Hugging Face DeepSeek-V3 checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.q_lora_rank, self.kv_lora_rank = cfg.n_heads, cfg.q_lora_rank, cfg.kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = (
            cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim)
        qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if self.q_lora_rank == 0:
            self.q_proj = Linear(cfg.dim, cfg.n_heads * qk_head_dim, bias=False)
        else:
            self.q_a_proj = Linear(cfg.dim, cfg.q_lora_rank, bias=False)  # W_DQ
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.q_b_proj = Linear(cfg.q_lora_rank, cfg.n_heads * qk_head_dim, bias=False)  # W_UQ
        self.kv_a_proj_with_mqa = Linear(cfg.dim, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)  # W_DKV
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps)
        self.kv_b_proj = Linear(cfg.kv_lora_rank, cfg.n_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = Linear(cfg.n_heads * cfg.v_head_dim, cfg.dim, bias=False)
        self.softmax_scale = cfg.softmax_scale
        self.cache_kv: torch.Tensor | None = None  # (B_max, S, kv_lora_rank)
        self.cache_pe: torch.Tensor | None = None  # (B_max, S, qk_rope_head_dim)

    def setup_cache(self, batch: int, seq_len: int, dtype: torch.dtype, device) -> None:
        self.cache_kv = torch.zeros(batch, seq_len, self.kv_lora_rank, dtype=dtype, device=device)
        self.cache_pe = torch.zeros(batch, seq_len, self.qk_rope_head_dim, dtype=dtype, device=device)

    def caches(self) -> list[torch.Tensor]:
        return [self.cache_kv, self.cache_pe]

    def cache_ready(self) -> bool:
        return self.cache_kv is not None

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank == 0 else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, self.n_heads, -1)  # (B, T, H, dn + dr)
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        q_pe = apply_rope(q_pe, ctx.cos, ctx.sin, interleaved=True)
        kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        kv = self.kv_a_layernorm(kv)  # (B, T, c)
        k_pe = apply_rope(k_pe.unsqueeze(2), ctx.cos, ctx.sin, interleaved=True).squeeze(2)  # (B, T, dr)
        if ctx.cached:
            out = self._absorbed(q_nope, q_pe, kv, k_pe, ctx)
        else:
            out = self._naive(q_nope, q_pe, kv, k_pe, ctx)
        return self.o_proj(out.flatten(2))

    def _naive(self, q_nope, q_pe, kv, k_pe, ctx: AttentionContext) -> torch.Tensor:
        B, T, H, _ = q_nope.shape
        k_nope, v = self.kv_b_proj(kv).view(B, T, H, -1).split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)  # (B, H, T, dn + dr)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(B, T, H, -1)], dim=-1).transpose(1, 2)
        # Fused (flash) SDPA kernels need equal q/k and v head sizes: zero-pad v, slice the output back.
        pad = q.shape[-1] - self.v_head_dim
        v = F.pad(v, (0, pad)) if pad > 0 else v
        out = F.scaled_dot_product_attention(
            q, k, v.transpose(1, 2), attn_mask=ctx.mask, is_causal=ctx.mask is None, scale=self.softmax_scale)
        return out.transpose(1, 2)[..., : self.v_head_dim]  # (B, T, H, dv)

    def _absorbed(self, q_nope, q_pe, kv, k_pe, ctx: AttentionContext) -> torch.Tensor:
        kv_all = _write_and_read(self.cache_kv, kv, ctx)  # (B, S, c)
        pe_all = _write_and_read(self.cache_pe, k_pe, ctx)  # (B, S, dr)
        w = self.kv_b_proj.weight.view(self.n_heads, -1, self.kv_lora_rank)  # (H, dn + dv, c)
        w_uk, w_uv = w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim:]
        q_lat = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)  # W_UK folded into the query: (B, T, H, c)
        scores = torch.einsum("bthc,bsc->bhts", q_lat, kv_all.to(q_lat.dtype))
        scores = scores + torch.einsum("bthr,bsr->bhts", q_pe, pe_all.to(q_pe.dtype))
        scores = (scores.float() * self.softmax_scale).masked_fill(~ctx.mask, float("-inf"))
        probs = scores.softmax(dim=-1).type_as(q_lat)  # (B, H, T, S)
        out = torch.einsum("bhts,bsc->bthc", probs, kv_all.to(probs.dtype))
        return torch.einsum("bthc,hdc->bthd", out, w_uv)  # W_UV folded into the output: (B, T, H, dv)


class GQA(nn.Module):
    """Grouped-query attention with half-split RoPE (Llama, Qwen2 with QKV bias)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.softmax_scale = cfg.softmax_scale
        self.cache_k: torch.Tensor | None = None  # (B_max, S, H_kv, hd)
        self.cache_v: torch.Tensor | None = None

    def setup_cache(self, batch: int, seq_len: int, dtype: torch.dtype, device) -> None:
        shape = (batch, seq_len, self.n_kv_heads, self.head_dim)
        self.cache_k = torch.zeros(shape, dtype=dtype, device=device)
        self.cache_v = torch.zeros(shape, dtype=dtype, device=device)

    def caches(self) -> list[torch.Tensor]:
        return [self.cache_k, self.cache_v]

    def cache_ready(self) -> bool:
        return self.cache_k is not None

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, T, self.n_heads, self.head_dim), ctx.cos, ctx.sin, interleaved=False)
        k = apply_rope(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim), ctx.cos, ctx.sin, interleaved=False)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if ctx.cached:
            k, v = _write_and_read(self.cache_k, k, ctx), _write_and_read(self.cache_v, v, ctx)  # (B, S, H_kv, hd)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype), attn_mask=ctx.mask,
            is_causal=ctx.mask is None, scale=self.softmax_scale, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(out.transpose(1, 2).flatten(2))
