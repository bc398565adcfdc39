"""Weight-only quantization for inference: int8 per channel, int4 per group (gpt-fast's scheme), FP8 loading.

- int8: W[n, :] = q[n, :] * scale[n]; q int8, one scale per output channel (symmetric, amax / 127).
- int4: W[n, k] = (q[n, k] - 8) * scale[g, n] + zero[g, n], g = k // group_size; q in 0..15, one (scale, zero)
  per group of `group_size` inputs (asymmetric min/max, as tinygemm and GGUF Q4_1 define it). K is padded with
  zeros up to a multiple of the group size.

A quantized layer computes in the dtype of its scales (bf16 by default, whatever the model's dtype): the input
is cast to it and the output cast back, as `PackedLinears(model, torch.bfloat16)` does for float layers. On CPU
the matmuls are PyTorch's weight-only kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`), whose fp32
paths measured 15-35x slower than their bf16 ones here; on CUDA int4 is tinygemm (`_weight_int4pack_mm`, bf16
only) and int8 is dequantize-then-matmul (the CUDA `_weight_int8pack_mm` is a naive per-output-element loop).
The int4 kernels want the weight in a device-specific layout: it is built on first use and cached next to the
portable codes (so an int4 layer holds 1 byte per weight, not 0.5). Other devices dequantize per call.

Quantized modules keep the float module's name, so a saved model maps like a float one (`save_model` writes the
int tensors and scales plus a `quantization_config`; `load_model` restores them). Format, version 1:
    config.json  "quantization_config": {"quant_method": "r1kit", "version": 1,
                                         "modules": {"<hf module name>": {"bits": 8|4, "group_size": null|g}}}
    int8  <m>.weight int8 [N, K]            <m>.scales [N]
    int4  <m>.weight uint8 [N, Kp/2]        <m>.scales_and_zeros [Kp/g, N, 2]  (scale, zero)
          byte j of a row holds codes 2j (high nibble) and 2j+1 (low nibble); Kp = K rounded up to g
    routed experts (<layer>.mlp.experts.gate_up_proj / .down_proj) are the same with a leading expert axis E.
    An optional float <m>.bias rides along. Scales are stored in the compute dtype.

FP8 kept (`load_model(release_dir, quantize="fp8")`, version 2 of the format): the DeepSeek-V3/R1 release's
block-scaled float8_e4m3fn weights stay as stored, one fp32 scale per block; each matmul dequantizes its weight
to bf16 first (no FP8 GEMM kernel here): half of bf16's memory, not its speed.
    fp8   <m>.weight float8_e4m3fn [..., N, K]   <m>.weight_scale_inv fp32 [..., ceil(N/bn), ceil(K/bk)]
          modules entry {"bits": 8, "group_size": null, "format": "fp8_e4m3", "block": [bn, bk]}

What stays float: embeddings, norms, the MoE router, MLA's kv_b_proj (the absorbed decode folds its weight
into the attention), MTP modules. The output head is int8 unless asked otherwise (int4 heads measured worse).
Quantized models are for inference: no gradients reach their weights.
Also here: dequantizing the FP8 block-scaled weights of the DeepSeek-V3/R1 release (`weight_scale_inv`).
Left out: activation quantization (int8 x int8 GEMMs), GPTQ/AWQ-style calibration, a fused int4/int8 kernel
for the routed experts (one matmul per active expert here). The CUDA paths have not been run (no GPU here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from r1kit.errors import CheckpointError, ConfigError
from r1kit.models.linear import Linear
from r1kit.models.moe import Experts

SCHEMES = {"int8": (8, None), "int4": (4, 32), "int4-g32": (4, 32), "int4-g64": (4, 64), "int4-g128": (4, 128)}
GROUP_SIZES = (32, 64, 128, 256)  # what the int4 kernels accept
FORMAT_VERSION = 1
FP8_FORMAT_VERSION = 2  # written when a model holds FP8 layers; version 1 files read the same
_FLOAT_ONLY = ("kv_b_proj",)  # MLA's absorbed decode reads this weight as a tensor


def parse_scheme(scheme: str) -> tuple[int, int | None]:
    """'int8' -> (8, None); 'int4' -> (4, 32); 'int4-g64' -> (4, 64)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"quantize: unknown scheme {scheme!r} (one of {', '.join(SCHEMES)})")
    return SCHEMES[scheme]


# ---- the formats (pure functions) ---------------------------------------------------------------------------------

def quantize_int8(w: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., N, K) float -> q int8 (..., N, K), scales (..., N) in `dtype`: w ~ q * scales[..., None]."""
    w = w.detach().float()
    scales = (w.abs().amax(dim=-1) / 127).clamp(min=1e-12).to(dtype)  # rounded first: q is fit to the stored scale
    q = (w / scales.float().unsqueeze(-1)).round().clamp(-128, 127).to(torch.int8)
    return q, scales


def quantize_int4(w: torch.Tensor, group_size: int, dtype: torch.dtype = torch.bfloat16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., N, K) float -> codes uint8 (..., N, Kp) in 0..15, scales_and_zeros (..., Kp/g, N, 2) in `dtype`,
    Kp = K rounded up to g: w ~ (codes - 8) * scale + zero per group (min/max, asymmetric)."""
    *lead, N, K = w.shape
    Kp = math.ceil(K / group_size) * group_size
    groups = F.pad(w.detach().float(), (0, Kp - K)).view(*lead, N, Kp // group_size, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).to(dtype)
    zero = (lo + 8 * scale.float()).to(dtype)
    return _codes(groups, scale, zero), torch.stack([scale, zero], dim=-1).transpose(-3, -2).contiguous()


def int4_from_blocks(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype = torch.bfloat16
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes already on the int4 grid (e.g. GGUF Q4_0/Q4_1): codes uint8 (N, K), scale/zero (N, K/g) fp32 with
    w = (codes - 8) * scale + zero. Returns (codes, scales_and_zeros) as `quantize_int4` does, codes untouched."""
    return codes.to(torch.uint8), torch.stack([scale.to(dtype), zero.to(dtype)], dim=-1).transpose(0, 1).contiguous()


def _codes(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    codes = (groups - zero.float().unsqueeze(-1)) / scale.float().unsqueeze(-1) + 8
    return codes.round().clamp(0, 15).to(torch.uint8).flatten(-2)  # (..., N, Kp)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """codes uint8 (..., Kp) in 0..15 -> (..., Kp/2): code 2j in the high nibble, 2j+1 in the low one."""
    return (codes[..., ::2] << 4) | codes[..., 1::2]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).flatten(-2)


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                          dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """DeepSeek-V3 FP8 release: weight float8_e4m3fn (N, K), scale_inv fp32 (ceil(N/bn), ceil(K/bk));
    W = weight * scale_inv[n // bn, k // bk] (edge blocks partial), computed in fp32, returned in `dtype`."""
    bn, bk = block
    N, K = weight.shape
    if tuple(scale_inv.shape) != (math.ceil(N / bn), math.ceil(K / bk)):
        raise CheckpointError(f"FP8 weight of shape {(N, K)} needs a weight_scale_inv of shape "
                              f"{(math.ceil(N / bn), math.ceil(K / bk))} for {bn}x{bk} blocks, got {tuple(scale_inv.shape)}")
    nb, kb = scale_inv.shape
    blocks = F.pad(weight.float(), (0, kb * bk - K, 0, nb * bn - N)).view(nb, bn, kb, bk)  # edge blocks padded
    return (blocks * scale_inv.float()[:, None, :, None]).view(nb * bn, kb * bk)[:N, :K].to(dtype)


def dequantize_fp8_checkpoint(tensors: dict[str, torch.Tensor], block: tuple[int, int] = (128, 128),
                              dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Replace every `X.weight` that has an `X.weight_scale_inv` by its dequantized value; drop the scales."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(".weight_scale_inv"):
            continue
        scale = tensors.get(f"{name}_scale_inv")
        if scale is not None:
            t = dequantize_fp8_blocks(t, scale, block, dtype)
        elif t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise CheckpointError(f"checkpoint tensor {name!r} is FP8 but has no {name}_scale_inv")
        out[name] = t
    orphans = [n for n in tensors if n.endswith(".weight_scale_inv") and n.removesuffix("_scale_inv") not in tensors]
    if orphans:
        raise CheckpointError(f"checkpoint has {orphans[0]!r} without its weight")
    return out


# ---- kernels --------------------------------------------------------------------------------------------------------

def _aligned(t: torch.Tensor, alignment: int) -> torch.Tensor:
    """t, or a fresh (64-byte aligned) copy when its data is not `alignment`-byte aligned: the CPU kernels use
    aligned vector loads (safetensors hands out tensors 8-byte aligned; views start anywhere)."""
    t = t.contiguous()
    if torch.compiler.is_compiling():  # inductor's buffers are aligned; a data_ptr check would break the graph
        return t
    return t if t.data_ptr() % alignment == 0 else t.clone()


def _int8_mm(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, K) in scales.dtype, q int8 (N, K), scales (N,) -> (M, N)."""
    if x.device.type == "cpu" and q.shape[1] % 16 == 0:  # rows of 16: the kernel's aligned 16-wide loads
        return torch.ops.aten._weight_int8pack_mm(_aligned(x, 32), _aligned(q, 16), scales)
    return F.linear(x, q.to(x.dtype)) * scales


def _int4_kernel_layout(codes: torch.Tensor, sz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One matrix's codes (N, Kp) and scales_and_zeros (Kp/g, N, 2) in the current device's kernel layout, with N
    padded to what the kernel needs (16 on CPU, 8 on CUDA)."""
    N, Kp = codes.shape
    multiple = 16 if codes.device.type == "cpu" else 8
    pad = -N % multiple
    codes, sz = F.pad(codes, (0, 0, 0, pad)), F.pad(sz, (0, 0, 0, pad))
    if codes.device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int().contiguous(), 1), sz
    inner_k_tiles = next(t for t in (8, 4, 2) if Kp % (t * 16) == 0)
    packed = torch.ops.aten._convert_weight_to_int4pack(pack_nibbles(codes).contiguous(), inner_k_tiles)
    return packed, sz.to(torch.bfloat16)  # tinygemm computes in bf16 only


def _int4_mm(x: torch.Tensor, kernel: tuple | None, codes: torch.Tensor, sz: torch.Tensor, group_size: int
             ) -> torch.Tensor:
    """x (M, Kp) -> (M, N') on the kernel layout (N' >= N: padded rows), or by dequantizing (no kernel)."""
    if kernel is None:
        scale, zero = sz.unbind(-1)  # (Kp/g, N)
        w = (codes.to(x.dtype) - 8) * scale.T.repeat_interleave(group_size, 1) + zero.T.repeat_interleave(group_size, 1)
        return F.linear(x, w)
    packed, ksz = kernel
    if x.device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(_aligned(x, 64), packed, group_size, ksz)
    return torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16).contiguous(), packed, group_size, ksz).to(x.dtype)


# ---- modules --------------------------------------------------------------------------------------------------------

class Int8Linear(nn.Module):
    """Weight-only int8 linear: y = x (q * scales)^T + b. A leading expert axis (E, N, K) is allowed; then
    `forward(x, expert=e)` uses expert e's matrix."""

    bits, group_size = 8, None

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = q.shape[-1], q.shape[-2]
        self.register_buffer("weight", q)  # (..., N, K) int8
        self.register_buffer("scales", scales)  # (..., N)
        self.register_buffer("bias", bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype=torch.bfloat16) -> Int8Linear:
        return cls(*quantize_int8(weight, dtype), None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        q, scales = (self.weight, self.scales) if expert is None else (self.weight[expert], self.scales[expert])
        y = _int8_mm(x.reshape(-1, self.in_features).to(scales.dtype), q, scales)
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8, per-channel"


class Int4Linear(nn.Module):
    """Weight-only int4 linear, `group_size` inputs per (scale, zero). Stores the portable codes; the kernel
    layout of the current device is built on first use and rebuilt when the device or the codes change."""

    bits = 4

    def __init__(self, packed_codes: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int,
                 group_size: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, packed_codes.shape[-2], group_size
        self.register_buffer("weight", packed_codes)  # (..., N, Kp/2) uint8, two codes a byte
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (..., Kp/g, N, 2)
        self.register_buffer("bias", bias)
        self._kernel: tuple | None = None  # (key, [per-matrix kernel layouts])

    @classmethod
    def from_float(cls, weight: torch.Tensor, group_size: int, bias: torch.Tensor | None = None,
                   dtype=torch.bfloat16) -> Int4Linear:
        codes, sz = quantize_int4(weight, group_size, dtype)
        return cls(pack_nibbles(codes), sz, weight.shape[-1], group_size, None if bias is None else bias.detach())

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                   bias: torch.Tensor | None = None) -> Int4Linear:
        return cls(pack_nibbles(codes), scales_and_zeros, codes.shape[-1], group_size, bias)

    def __getstate__(self):  # a cache: copies and pickles rebuild it
        return {**self.__dict__, "_kernel": None}

    def _kernels(self) -> list | None:
        device = self.weight.device
        if device.type not in ("cpu", "cuda"):
            return None
        if torch.compiler.is_compiling() and self._kernel is not None:
            return self._kernel[1]  # built by an eager call (the prefill): no data_ptr guard in a compiled step
        key = (device, self.weight.data_ptr(), self.scales_and_zeros.data_ptr(), self.scales_and_zeros.dtype)
        if self._kernel is None or self._kernel[0] != key:
            codes, sz = unpack_nibbles(self.weight), self.scales_and_zeros
            if codes.dim() == 2:
                layouts = [_int4_kernel_layout(codes, sz)]
            else:
                layouts = [_int4_kernel_layout(c, s) for c, s in zip(codes, sz)]
            self._kernel = (key, layouts)
        return self._kernel[1]

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        sz = self.scales_and_zeros if expert is None else self.scales_and_zeros[expert]
        Kp = sz.shape[-3] * self.group_size
        x2d = F.pad(x.reshape(-1, self.in_features).to(sz.dtype), (0, Kp - self.in_features))
        kernels = self._kernels()
        if kernels is None:
            codes = unpack_nibbles(self.weight if expert is None else self.weight[expert])
            y = _int4_mm(x2d, None, codes, sz, self.group_size)
        else:
            y = _int4_mm(x2d, kernels[expert or 0], None, sz, self.group_size)
        y = y[:, : self.out_features].reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
                f"group_size={self.group_size}")


class Fp8Linear(nn.Module):
    """Weight kept as the DeepSeek-V3/R1 release stores it: float8_e4m3fn, y = x (W * scale_inv[block])^T + b,
    one fp32 scale per (bn, bk) block (edge blocks partial). Each call dequantizes the weight to `dtype` and runs
    a plain matmul in it. A leading expert axis (E, N, K) is allowed, as for the int layers."""

    bits, group_size = 8, None

    def __init__(self, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                 bias: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features, self.block, self.dtype = weight.shape[-1], weight.shape[-2], block, dtype
        self.register_buffer("weight", weight)  # (..., N, K) float8_e4m3fn
        self.register_buffer("weight_scale_inv", scale_inv)  # (..., ceil(N/bn), ceil(K/bk)) fp32
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        w, s = (self.weight, self.weight_scale_inv) if expert is None else (
            self.weight[expert], self.weight_scale_inv[expert])
        y = F.linear(x.to(self.dtype), dequantize_fp8_blocks(w, s, self.block, self.dtype)).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3, blocks {self.block}"


QuantizedLinear = Int8Linear | Int4Linear | Fp8Linear


class QuantizedExperts(nn.Module):
    """Drop-in for `moe.Experts` (same forward contract) on quantized stacked weights: one weight-only matmul per
    expert that received tokens (a Python loop over the active experts; the token counts are read on the host)."""

    def __init__(self, gate_up_proj: QuantizedLinear, down_proj: QuantizedLinear):
        super().__init__()
        self.gate_up_proj, self.down_proj = gate_up_proj, down_proj  # (E, 2I, d), (E, d, I)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor):
        """x (N, d), weights/indices (N, k), counts (E,) tokens per expert. Returns (N, d)."""
        k = indices.shape[1]
        order = indices.flatten().argsort(stable=True)  # token-slots sorted by expert
        token_of = order // k
        xs = x[token_of]  # (N*k, d), grouped by expert
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n:
                gate, up = self.gate_up_proj(xs[start:start + n], expert=e).chunk(2, dim=-1)
                ys[start:start + n] = self.down_proj(F.silu(gate) * up, expert=e)
            start += n
        ys = ys * weights.flatten()[order].unsqueeze(1).to(ys.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, ys)


# ---- whole models ---------------------------------------------------------------------------------------------------

def _quantize_weight(weight: torch.Tensor, bias, bits: int, group_size: int | None, dtype, codes=None):
    if bits == 8:
        return Int8Linear.from_float(weight, bias, dtype)
    if codes is not None:  # already on the int4 grid (GGUF): keep the codes
        return Int4Linear.from_codes(*int4_from_blocks(*codes, dtype=dtype), group_size,
                                     None if bias is None else bias.detach())
    return Int4Linear.from_float(weight, group_size, bias, dtype)


def _targets(model: nn.Module):
    """(name, parent, attribute, module) of every float Linear / Experts that quantization replaces."""
    for parent_name, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            name = f"{parent_name}.{attr}" if parent_name else attr
            if name.startswith("mtp.") or attr in _FLOAT_ONLY:
                continue
            if isinstance(child, (Linear, Experts)):
                yield name, parent, attr, child


def quantize_model(model: nn.Module, bits: int, group_size: int | None = None, *, head_bits: int | None = None,
                   dtype: torch.dtype = torch.bfloat16, int4_codes: dict | None = None) -> nn.Module:
    """Quantize `model`'s linear layers and routed experts in place (weight-only) and return it.

    bits 8: per-channel int8 (group_size must be None). bits 4: int4 with group_size in 32/64/128/256
    (default 32). head_bits: bits of the output head; default 8 (with an int4 head SmolLM2's int4 g32
    perplexity went from 21.82 to 23.04, fp32 21.67; docs/quantization.md). dtype: scales and compute dtype.
    int4_codes: {module name: (codes uint8 (N, K), scale (N, K/g), zero (N, K/g))} weights already on the int4
    grid with this group size (GGUF Q4_0/Q4_1), used instead of re-quantizing their float values."""
    _check(bits, group_size)
    head_bits = head_bits or 8
    _check(head_bits, None if head_bits == 8 else group_size)
    int4_codes = int4_codes or {}
    for name, parent, attr, child in _targets(model):
        b = head_bits if name == "lm_head" else bits
        g = (group_size or 32) if b == 4 else None
        with torch.no_grad():
            if isinstance(child, Experts):
                new = QuantizedExperts(_quantize_weight(child.gate_up_proj, None, b, g, dtype),
                                       _quantize_weight(child.down_proj, None, b, g, dtype))
            else:
                new = _quantize_weight(child.weight, child.bias, b, g, dtype, int4_codes.get(name) if b == 4 else None)
        setattr(parent, attr, new)
    return model


def quantize_loaded(model: nn.Module, source, bits: int, group_size: int | None = None, *,
                    head_bits: int | None = None) -> nn.Module:
    """`quantize_model` for a model just loaded from `source` (a path or preset name): a GGUF file's Q4_0/Q4_1
    weights keep their 4-bit codes when the scheme is int4 with groups of 32 (GGUF's block size)."""
    codes = None
    if bits == 4 and (group_size or 32) == 32 and str(source).endswith(".gguf"):
        from pathlib import Path

        from r1kit.models.gguf import read_gguf_int4_codes

        device = next(model.parameters()).device
        codes = {n: tuple(t.to(device) for t in c) for n, c in read_gguf_int4_codes(Path(source)).items()}
    return quantize_model(model, bits, group_size, head_bits=head_bits, int4_codes=codes)


def _check(bits: int, group_size: int | None) -> None:
    if bits not in (4, 8):
        raise ConfigError(f"quantize: bits must be 8 or 4, got {bits}")
    if bits == 8 and group_size is not None:
        raise ConfigError("quantize: int8 is per output channel; group_size applies to bits=4 only")
    if bits == 4 and group_size is not None and group_size not in GROUP_SIZES:
        raise ConfigError(f"quantize: group_size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int4Linear, Fp8Linear)) for m in model.modules())


def quantization_config(model: nn.Module, to_name=lambda n: n) -> dict | None:
    """The `quantization_config` entry of config.json for a quantized model (None if nothing is quantized).
    to_name maps an r1kit module name to the checkpoint's."""
    modules = {}
    for name, m in model.named_modules():
        if isinstance(m, (Int8Linear, Int4Linear, Fp8Linear)):
            name = name.removesuffix(".gate_up_proj").removesuffix(".down_proj") if _is_expert(model, name) else name
            modules[to_name(name)] = {"bits": m.bits, "group_size": m.group_size if m.bits == 4 else None}
            if isinstance(m, Fp8Linear):
                modules[to_name(name)].update(format="fp8_e4m3", block=list(m.block))
    if not modules:
        return None
    fp8 = any("format" in spec for spec in modules.values())
    return {"quant_method": "r1kit", "version": FP8_FORMAT_VERSION if fp8 else FORMAT_VERSION, "modules": modules}


def _is_expert(model: nn.Module, name: str) -> bool:
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return isinstance(parent, QuantizedExperts)


def apply_quantization_config(model: nn.Module, qconfig: dict, from_name=lambda n: n,
                              dtype: torch.dtype = torch.bfloat16) -> None:
    """Replace the modules `qconfig` names by quantized shells of the right shapes and dtypes (built on the
    model's device, meta included), ready for `load_state_dict(..., assign=True)`."""
    if qconfig.get("quant_method") != "r1kit" or qconfig.get("version") not in (FORMAT_VERSION, FP8_FORMAT_VERSION):
        raise CheckpointError(f"quantization_config: expected quant_method 'r1kit' version {FORMAT_VERSION} or "
                              f"{FP8_FORMAT_VERSION}, got {qconfig.get('quant_method')!r} version "
                              f"{qconfig.get('version')!r}")
    targets = {name: (parent, attr, child) for name, parent, attr, child in _targets(model)}
    for ckpt_name, spec in qconfig.get("modules", {}).items():
        name = from_name(ckpt_name)
        if name not in targets:
            raise CheckpointError(f"quantization_config names {ckpt_name!r}, which is not a quantizable module")
        bits, group_size, block = spec.get("bits"), spec.get("group_size"), spec.get("block")
        try:
            _check(bits, group_size)
            fmt = spec.get("format", "int")
            if fmt not in ("int", "fp8_e4m3") or (fmt == "fp8_e4m3") != (block is not None):
                raise ConfigError(f"unknown format {fmt!r} (int, or fp8_e4m3 with a block)")
        except ConfigError as e:
            raise CheckpointError(f"quantization_config[{ckpt_name!r}]: {e}") from None
        block = tuple(block) if block is not None else None
        parent, attr, child = targets[name]
        if isinstance(child, Experts):
            new = QuantizedExperts(_shell(child.gate_up_proj, False, bits, group_size, dtype, block),
                                   _shell(child.down_proj, False, bits, group_size, dtype, block))
        else:
            new = _shell(child.weight, child.bias is not None, bits, group_size, dtype, block)
        setattr(parent, attr, new)


def _shell(weight: torch.Tensor, bias: bool, bits: int, group_size: int | None, dtype,
           fp8_block: tuple[int, int] | None = None) -> QuantizedLinear:
    """Empty quantized layer for a float weight (..., N, K), on that weight's device."""
    *lead, N, K = weight.shape
    device = weight.device
    b = torch.empty(N, dtype=weight.dtype, device=device) if bias else None
    if fp8_block is not None:
        bn, bk = fp8_block
        return Fp8Linear(torch.empty(*lead, N, K, dtype=torch.float8_e4m3fn, device=device),
                         torch.empty(*lead, math.ceil(N / bn), math.ceil(K / bk), device=device), fp8_block, b, dtype)
    if bits == 8:
        return Int8Linear(torch.empty(*lead, N, K, dtype=torch.int8, device=device),
                          torch.empty(*lead, N, dtype=dtype, device=device), b)
    Kp = math.ceil(K / group_size) * group_size
    return Int4Linear(torch.empty(*lead, N, Kp // 2, dtype=torch.uint8, device=device),
                      torch.empty(*lead, Kp // group_size, N, 2, dtype=dtype, device=device), K, group_size, b)


def fixed_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """State-dict names whose dtype the quantization fixes (int codes, scales): a load must not cast them."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (Int8Linear, Int4Linear, Fp8Linear)):
            for attr, t in m.named_buffers(recurse=False):
                if attr != "bias":
                    out[f"{name}.{attr}"] = t.dtype
    return out


__all__ = [
    "SCHEMES",
    "Fp8Linear",
    "Int4Linear",
    "Int8Linear",
    "QuantizedExperts",
    "apply_quantization_config",
    "dequantize_fp8_blocks",
    "dequantize_fp8_checkpoint",
    "is_quantized",
    "parse_scheme",
    "quantization_config",
    "quantize_int4",
    "quantize_int8",
    "quantize_loaded",
    "quantize_model",
]
