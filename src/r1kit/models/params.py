"""Parameter counts without allocating weights (meta device).

total: every weight of the main model, including the fp32 router biases; mtp: the MTP modules' own weights
(their embedding and head are shared with the main model); active: the parameters one token uses — embedding,
head, final norm, every layer's attention and norms, the dense MLPs, and per MoE layer the gate (weight and
bias), the shared experts and `n_activated_experts` routed experts.
"""

from __future__ import annotations

import torch

from r1kit.models.config import ModelConfig
from r1kit.models.moe import Experts
from r1kit.models.transformer import Transformer


def _numel(module: torch.nn.Module) -> int:
    params = sum(p.numel() for p in module.parameters())
    biases = sum(b.numel() for name, b in module.named_buffers() if name.endswith("e_score_correction_bias"))
    return params + biases


def count_params(cfg: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = Transformer(cfg)
    mtp = _numel(model.mtp)
    total = _numel(model) - mtp
    inactive = 0
    for m in model.modules():
        if isinstance(m, Experts) and m not in set(model.mtp.modules()):
            per_expert = (m.gate_up_proj.numel() + m.down_proj.numel()) // m.gate_up_proj.shape[0]
            inactive += per_expert * (cfg.n_routed_experts - cfg.n_activated_experts)
    return {
        **kv_cache_bytes_per_token(cfg),
        "total": total,
        "active": total - inactive,
        "mtp": mtp,
        "total_with_mtp": total + mtp,
        "embedding": model.embed_tokens.weight.numel(),
        "layers": cfg.n_layers,
        "moe_layers": sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers)),
    }


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 2) -> dict[str, int]:
    """KV-cache bytes per token (all layers, bf16 by default): r1kit's cache, and a full per-head K/V cache.

    MLA caches the normalized latent c_KV and the shared RoPE key k_pe; an un-absorbed implementation would
    cache every head's key (nope + rope dims) and value. GQA caches K and V per KV head."""
    if cfg.is_mla:
        cached = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        full = cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    else:
        cached = 2 * cfg.n_kv_heads * cfg.head_dim
        full = 2 * cfg.n_heads * cfg.head_dim
    return {"kv_cache_bytes_per_token": cached * cfg.n_layers * bytes_per_value,
            "full_kv_cache_bytes_per_token": full * cfg.n_layers * bytes_per_value}
