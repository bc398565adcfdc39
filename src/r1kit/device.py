"""The one device setting of every r1kit entry point: `auto` | `cpu` | `cuda` | `cuda:N`.

`auto` is CUDA when present (under torchrun, the process's `cuda:LOCAL_RANK`), else the CPU. Asking for CUDA
on a machine without it is a `ConfigError` that says so, never a stack trace from deep inside torch.

Left out: MPS, XPU and other accelerators (they would be another `type` here and in the trainers' autocast).
"""

from __future__ import annotations

import re

import torch

from r1kit.errors import ConfigError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
DEVICE_HELP = f"where the model runs: {DEVICE_CHOICES} (auto = CUDA when present, default auto)"
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(setting: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The torch.device a setting names (None = auto); `local_rank` picks the GPU of a torchrun process when
    the setting does not name one."""
    if isinstance(setting, torch.device):
        setting = str(setting)
    setting = "auto" if setting is None else setting.strip().lower()
    if not _PATTERN.match(setting):
        raise ConfigError(f"device {setting!r}: expected {DEVICE_CHOICES}")
    if setting == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if setting == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise ConfigError(f"device {setting!r}: CUDA is not available on this machine (torch "
                          f"{torch.__version__}, torch.cuda.is_available() is False); use --device cpu or auto")
    index = int(setting.split(":")[1]) if ":" in setting else local_rank
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {setting!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def configure_device(device: torch.device) -> None:
    """Per-process settings for fast training on `device`: on CUDA, select it and allow TF32 matmuls/convs
    (fp32 matmuls on tensor cores, ~10-bit mantissa products with fp32 accumulation, as torchtitan does)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")


__all__ = ["DEVICE_CHOICES", "DEVICE_HELP", "configure_device", "resolve_device"]
