"""Read GGUF files (llama.cpp) into r1kit tensors, dequantized to fp32 by the `gguf` package.

llama.cpp stores Llama's q/k projections with rows permuted for its rotary layout; they are permuted back
(Qwen2 files are stored unpermuted). `read_gguf_int4_codes` also reads Q4_0/Q4_1 weights as they are stored
(4-bit codes + a scale per block of 32), so int4 quantization can keep them instead of re-quantizing floats.
`read_gguf_quantized` keeps a whole file's quantization, the way llama.cpp runs it (`load_model(...,
quantize="gguf")`): Q4_0/Q4_1 linear weights become r1kit int4 (groups of 32, the stored codes; the fp16 block
scales rounded to the bf16 the kernels compute in), every other quantized type (Q8_0, k-quants) int8 per output
channel, float tensors stay float; one tensor is dequantized at a time, so the float model never exists.
Left out: other GGUF architectures (deepseek2 included); Q8_0's per-32 scales kept exactly (r1kit's int8 kernel
has one scale per row, so they are merged: a second rounding, measured in docs/quantization.md).
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


def _open(path: Path):
    """(reader, config, (arch, n_heads, n_kv)) of a GGUF file, or a CheckpointError naming what is wrong."""
    from gguf import GGUFReader

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
    return reader, cfg, (arch, n_heads, n_kv)


def _float(t, heads: int) -> torch.Tensor:
    """One GGUF tensor dequantized to fp32 by the gguf package (rows un-permuted for llama's q/k)."""
    from gguf.quants import dequantize

    w = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape.tolist())])
    if heads:
        w = _unpermute(w, heads)
    return torch.from_numpy(np.array(w, dtype=np.float32))


def read_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, {r1kit name: fp32 tensor}): every tensor dequantized."""
    reader, cfg, (arch, n_heads, n_kv) = _open(path)
    tensors = {}
    for t in reader.tensors:
        name, heads = _name(path, t.name, arch, n_heads, n_kv)
        tensors[name] = _float(t, heads)
    return cfg, tensors


def read_gguf_quantized(path: Path, dtype: torch.dtype = torch.bfloat16
                        ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict | None]:
    """(config, tensors, quantization_config) with the file's quantized linear weights kept quantized in r1kit's
    weight-only format (models/quantize.py), ready for `build_model(..., quantization=)`; the config is None when
    the file holds no quantized linear weight. dtype: the scales' (and the quantized layers' compute) dtype.
    A tied output head whose embedding is stored quantized gets its own int8 copy, as llama.cpp computes the
    head on the quantized embedding."""
    from gguf import GGMLQuantizationType as Q

    from r1kit.models.quantize import FORMAT_VERSION, int4_from_blocks, pack_nibbles, quantize_int8

    floats = (Q.F32, Q.F16, Q.BF16)
    reader, cfg, (arch, n_heads, n_kv) = _open(path)
    tensors, modules = {}, {}
    for t in reader.tensors:
        name, heads = _name(path, t.name, arch, n_heads, n_kv)
        module = name.removesuffix(".weight")
        linear = name.endswith("_proj.weight") or name == "lm_head.weight"
        if not linear or t.tensor_type in floats:
            tensors[name] = _float(t, heads)
            if name == "embed_tokens.weight" and cfg.tie_embeddings and t.tensor_type not in floats:
                tensors["lm_head.weight"], tensors["lm_head.scales"] = quantize_int8(tensors[name], dtype)
                modules["lm_head"] = {"bits": 8, "group_size": None}
        elif _q4_header(t.tensor_type) is not None:
            codes, scale, zero = _q4_blocks(t, heads)
            codes, tensors[f"{module}.scales_and_zeros"] = int4_from_blocks(codes, scale, zero, dtype)
            tensors[name] = pack_nibbles(codes)
            modules[module] = {"bits": 4, "group_size": 32}
        else:
            tensors[name], tensors[f"{module}.scales"] = quantize_int8(_float(t, heads), dtype)
            modules[module] = {"bits": 8, "group_size": None}
    quantization = {"quant_method": "r1kit", "version": FORMAT_VERSION, "modules": modules} if modules else None
    return cfg, tensors, quantization


def _name(path: Path, gguf_name: str, arch: str, n_heads: int, n_kv: int) -> tuple[str, int]:
    """r1kit name of a GGUF tensor, and the head count to un-permute its rows by (0: stored as is)."""
    if gguf_name in _NAMES:
        return _NAMES[gguf_name], 0
    parts = gguf_name.split(".")  # blk.N.kind.weight|bias
    if parts[0] != "blk" or parts[2] not in _BLOCK:
        raise CheckpointError(f"{path}: unexpected GGUF tensor {gguf_name!r}")
    heads = {"attn_q": n_heads, "attn_k": n_kv}.get(parts[2], 0) if arch == "llama" else 0
    return f"layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}", heads


def _q4_header(tensor_type) -> int | None:
    """Bytes before the 16 bytes of codes in a Q4_0 / Q4_1 block; None for any other type."""
    from gguf import GGMLQuantizationType as Q

    return {Q.Q4_0: 2, Q.Q4_1: 4}.get(tensor_type)


def _q4_blocks(t, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_0 / Q4_1 tensor as stored: codes uint8 (N, K) in 0..15, scale and zero fp32 (N, K/32), with
    W = (codes - 8) * scale + zero per block of 32 inputs.

    Q4_0 blocks hold an fp16 d: W = (q - 8) d, so scale = d, zero = 0. Q4_1 blocks hold fp16 d and m: W = q d + m,
    so scale = d, zero = m + 8 d. A block's 16 bytes hold inputs j (low nibble) and j + 16 (high nibble)."""
    from gguf import GGMLQuantizationType as Q

    N, K = (int(d) for d in reversed(t.shape.tolist()))
    header = _q4_header(t.tensor_type)
    blocks = np.asarray(t.data).reshape(N, K // 32, header + 16)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (N, K/32)
    qs = blocks[..., header:]  # (N, K/32, 16)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(N, K)
    if t.tensor_type == Q.Q4_1:
        zero = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) + 8 * d
    else:
        zero = np.zeros_like(d)
    if heads:
        codes, d, zero = (_unpermute(a, heads) for a in (codes, d, zero))
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (codes, d, zero))


def read_gguf_int4_codes(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The Q4_0 / Q4_1 weights of a GGUF file as stored: {r1kit module name: (codes, scale, zero)} (`_q4_blocks`)."""
    reader, _, (arch, n_heads, n_kv) = _open(path)
    out = {}
    for t in reader.tensors:
        if _q4_header(t.tensor_type) is not None:
            name, heads = _name(path, t.name, arch, n_heads, n_kv)
            out[name.removesuffix(".weight")] = _q4_blocks(t, heads)
    return out
