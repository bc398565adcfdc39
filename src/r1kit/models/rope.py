"""Rotary position embeddings: plain RoPE, YaRN (DeepSeek-V3) and Llama-3 frequency scaling.

Two layouts of the rotated dimensions exist in checkpoints and both are kept as stored:
- interleaved (DeepSeek): consecutive pairs (x0, x1), (x2, x3), ... are rotated by one frequency each;
- half-split (Llama, Qwen2): x[i] pairs with x[i + d/2].
The tables are computed once for `max_seq_len` positions and indexed by position, so any per-token position
layout (left/right padding, packing, a KV cache slot) is just a gather.
"""

from __future__ import annotations

import math

import torch

from r1kit.models.config import ModelConfig, yarn_mscale


def rope_dim(cfg: ModelConfig) -> int:
    return cfg.qk_rope_head_dim if cfg.is_mla else cfg.head_dim


def inverse_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Per-pair inverse frequencies (d/2,) and the attention factor applied to cos/sin."""
    dim, base = rope_dim(cfg), cfg.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, attention_factor = cfg.rope_factor, 1.0
    if cfg.rope_scaling == "yarn" and factor > 1:
        # YaRN: keep high frequencies (short wavelengths), interpolate low ones by `factor`, blend by a linear ramp
        # between the dimensions that complete beta_fast and beta_slow rotations over the original context.
        def correction_dim(rotations: float) -> float:
            return dim * math.log(cfg.original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(cfg.beta_fast)), 0)
        high = min(math.ceil(correction_dim(cfg.beta_slow)), dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)).clamp(0, 1)
        inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
        if cfg.mscale and cfg.mscale_all_dim:
            attention_factor = yarn_mscale(factor, cfg.mscale) / yarn_mscale(factor, cfg.mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    elif cfg.rope_scaling == "llama3" and factor > 1:
        low_wavelen = cfg.original_seq_len / cfg.low_freq_factor
        high_wavelen = cfg.original_seq_len / cfg.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (cfg.original_seq_len / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(mid, smoothed, inv_freq)
    return inv_freq, attention_factor


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_seq_len, d/2), fp32."""
    inv_freq, attention_factor = inverse_frequencies(cfg)
    t = torch.arange(cfg.max_seq_len, dtype=torch.float32)
    angles = torch.outer(t, inv_freq).to(device)
    return angles.cos() * attention_factor, angles.sin() * attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate x (B, T, H, d) by per-token angles cos/sin (B, T, d/2)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, d/2)
    xf = x.float()
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = xf.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.type_as(x)
