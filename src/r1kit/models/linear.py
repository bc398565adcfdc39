"""The model's linear layer, and its packed form for CPU inference.

`Linear` is `nn.Linear` (same parameters, same checkpoint names) plus one switch: inside
`PackedLinears(model).active()`, a bf16 layer multiplies with a copy of its weight that oneDNN has re-laid out
once into its blocked format (AMX / AVX-512-bf16 tiles). A plain bf16 `F.linear` re-packs the weight on every
call; at decode sizes a plain call measured 1.3-2.8x slower than a packed one here. The generation engine activates the packed
copies around each step only, so training, scoring and everything with autograd never see them.

The packed copy is a cache of the weight: it is rebuilt when the weight changes (an optimizer step bumps the
tensor's version counter, a load swaps its storage), so GRPO can share one model between the trainer and the
engine. It costs one extra copy of the weights in memory.

`PackedLinears(model, torch.bfloat16)` also packs the weights of an fp32 model, as bf16: its matmuls then run in
bf16 (inputs cast down, outputs back up) and everything else in fp32. This is the mixed-precision rollout GRPO
systems run (bf16 sampling, fp32 trainer); the log-probs differ from the trainer's by bf16 rounding, which
truncated importance sampling corrects.

Weight-only int8/int4 layers live in `quantize.py` (`Int8Linear`, `Int4Linear`): `quantize_model` swaps them in
for `Linear` modules, which `PackedLinears` then no longer sees (their kernels take their own layouts); the
layers left float (e.g. MLA's kv_b_proj) are still packed.

Left out: packed fp32 matmuls (MKL's packed sgemm, decoding from memory, measured slower than `F.linear` at
batch 1 and still 2.5x slower than packed bf16 at batch 16), and fusing the q/k/v or gate/up projections into one
matmul (measured 12-17% of matmul time on SmolLM2; not worth a second weight layout in the model).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class PackedWeight:
    """A weight in bf16 and oneDNN's blocked layout, with the version of the tensor it was packed from."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.key = _version_key(weight, bias)
        # 16: the batch size the layout is tuned for; measured as fast as a layout for 1 at batch 1 and 16, and
        # twice as fast at batch 4
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16), 16)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        self.out_features = weight.shape[0]
        self.active = False

    def __reduce__(self):  # a cache: copies and pickles of the model drop it (oneDNN's tensor has no storage)
        return _dropped, ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # no-op unless the model is fp32
        y = torch.ops.mkldnn._linear_pointwise(x2d, self.weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


class Linear(nn.Linear):
    packed: PackedWeight | None = None  # set by `PackedLinears`; used only while active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed
        if packed is not None and packed.active:
            return packed(x)
        return F.linear(x, self.weight, self.bias)


def packing_supported(model: nn.Module, dtype: torch.dtype | None = None) -> bool:
    """True for a CPU model whose matmuls would run in bf16 (dtype, default the model's) on oneDNN bf16 kernels."""
    weight = next(model.parameters(), None)
    return (weight is not None and weight.device.type == "cpu" and (dtype or weight.dtype) == torch.bfloat16
            and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinears:
    """The `Linear` layers of one model, run on packed weights inside `active()` (a no-op where unsupported).

    dtype: the matmul dtype; None = the model's (packing then applies to bf16 models only), torch.bfloat16 = bf16
    matmuls for an fp32 model too. Each weight is packed the first time and again whenever it has changed since.
    Build one per long-lived caller (the engine) so the layer list is collected once; the block must not need
    autograd."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        self.model, self.dtype = model, dtype
        self.layers = [m for m in model.modules() if isinstance(m, Linear)]

    @contextmanager
    def active(self) -> Iterator[None]:
        if not packing_supported(self.model, self.dtype):
            yield
            return
        for layer in self.layers:
            packed = layer.packed
            if packed is None or packed.key != _version_key(layer.weight, layer.bias):
                layer.packed = PackedWeight(layer.weight, layer.bias)
            layer.packed.active = True
        try:
            yield
        finally:
            for layer in self.layers:
                layer.packed.active = False


def packed_weights(model: nn.Module, dtype: torch.dtype | None = None):
    """`with packed_weights(model):` runs the model's linears on packed weights for the block."""
    return PackedLinears(model, dtype).active()


def _dropped() -> None:
    return None


def _version_key(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    # a new storage (load, dtype change) moves data_ptr; an in-place update bumps _version (inference tensors
    # keep no version counter, and cannot be updated outside inference mode)
    return tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in (weight, bias) if t is not None)
