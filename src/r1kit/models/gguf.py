"""Read GGUF files (llama.cpp) into r1kit tensors, dequantized to fp32 by the `gguf` package.

llama.cpp stores Llama's q/k projections with rows permuted for its rotary layout; they are permuted back
(Qwen2 files are stored unpermuted). `read_gguf_int4_codes` also reads Q4_0/Q4_1 weights as they are stored
(4-bit codes + a scale per block of 32), so int4 quantization can keep them instead of re-quantizing floats.
Left out: other GGUF architectures (deepseek2 included); keeping Q8_0 or k-quant blocks as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from r1kit.errors import CheckpointError
from r1kit.models.config import ModelConfig

_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(value).decode()
    return value.tolist()[0]


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def read_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as e:  # what the gguf package raises on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (llama, qwen2)")
    n_heads = _field(reader, f"{arch}.attention.head_count")
    n_kv = _field(reader, f"{arch}.attention.head_count_kv", n_heads)
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    cfg = ModelConfig(
        arch=arch, vocab_size=vocab, dim=_field(reader, f"{arch}.embedding_length"),
        n_layers=_field(reader, f"{arch}.block_count"), n_heads=n_heads, n_kv_heads=n_kv,
        inter_dim=_field(reader, f"{arch}.feed_forward_length"),
        norm_eps=_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        max_seq_len=_field(reader, f"{arch}.context_length", 4096),
        rope_theta=_field(reader, f"{arch}.rope.freq_base", 10000.0),
        tie_embeddings="output.weight" not in names, qkv_bias="blk.0.attn_q.bias" in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"), eos_token_id=[eos] if eos is not None else [],
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        n_routed_experts=0, n_shared_experts=0, n_dense_layers=0, n_mtp_layers=0, rope_scaling="none", q_lora_rank=0,
    )
    tensors = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape.tolist())])
        name, heads = _name(path, t.name, arch, n_heads, n_kv)
        if heads:
            w = _unpermute(w, heads)
        tensors[name] = torch.from_numpy(np.array(w, dtype=np.float32))
    return cfg, tensors


def _name(path: Path, gguf_name: str, arch: str, n_heads: int, n_kv: int) -> tuple[str, int]:
    """r1kit name of a GGUF tensor, and the head count to un-permute its rows by (0: stored as is)."""
    if gguf_name in _NAMES:
        return _NAMES[gguf_name], 0
    parts = gguf_name.split(".")  # blk.N.kind.weight|bias
    if parts[0] != "blk" or parts[2] not in _BLOCK:
        raise CheckpointError(f"{path}: unexpected GGUF tensor {gguf_name!r}")
    heads = {"attn_q": n_heads, "attn_k": n_kv}.get(parts[2], 0) if arch == "llama" else 0
    return f"layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}", heads


def read_gguf_int4_codes(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The Q4_0 / Q4_1 weights of a GGUF file as stored: {r1kit module name: (codes uint8 (N, K) in 0..15,
    scale fp32 (N, K/32), zero fp32 (N, K/32))} with W = (codes - 8) * scale + zero per block of 32 inputs.

    Q4_0 blocks hold an fp16 d: W = (q - 8) d, so scale = d, zero = 0. Q4_1 blocks hold fp16 d and m: W = q d + m,
    so scale = d, zero = m + 8 d. A block's 16 bytes hold inputs j (low nibble) and j + 16 (high nibble)."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    n_heads = _field(reader, f"{arch}.attention.head_count")
    n_kv = _field(reader, f"{arch}.attention.head_count_kv", n_heads)
    header = {GGMLQuantizationType.Q4_0: 2, GGMLQuantizationType.Q4_1: 4}
    out = {}
    for t in reader.tensors:
        if t.tensor_type not in header:
            continue
        N, K = (int(d) for d in reversed(t.shape.tolist()))
        blocks = np.asarray(t.data).reshape(N, K // 32, header[t.tensor_type] + 16)
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (N, K/32)
        qs = blocks[..., header[t.tensor_type]:]  # (N, K/32, 16)
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(N, K)
        if t.tensor_type == GGMLQuantizationType.Q4_1:
            zero = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) + 8 * d
        else:
            zero = np.zeros_like(d)
        name, heads = _name(path, t.name, arch, n_heads, n_kv)
        if heads:
            codes, d, zero = (_unpermute(a, heads) for a in (codes, d, zero))
        out[name.removesuffix(".weight")] = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (codes, d, zero))
    return out
