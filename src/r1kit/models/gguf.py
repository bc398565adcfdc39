"""Read GGUF files (llama.cpp) into r1kit tensors, dequantized to fp32 by the `gguf` package.

llama.cpp stores Llama's q/k projections with rows permuted for its rotary layout; they are permuted back
(Qwen2 files are stored unpermuted). Left out: other GGUF architectures (deepseek2 included).
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
        if t.name in _NAMES:
            name = _NAMES[t.name]
        else:
            parts = t.name.split(".")  # blk.N.kind.weight|bias
            if parts[0] != "blk" or parts[2] not in _BLOCK:
                raise CheckpointError(f"{path}: unexpected GGUF tensor {t.name!r}")
            name = f"layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}"
            if arch == "llama" and parts[2] in ("attn_q", "attn_k"):
                w = _unpermute(w, n_heads if parts[2] == "attn_q" else n_kv)
        tensors[name] = torch.from_numpy(np.array(w, dtype=np.float32))
    return cfg, tensors
