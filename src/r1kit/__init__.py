"""r1kit: build, train, distill, evaluate and serve DeepSeek-R1-style reasoning models.

The public entry points are imported lazily so that `import r1kit.rewards` stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "r1kit.models.checkpoint",
    "save_model": "r1kit.models.checkpoint",
    "load_tokenizer": "r1kit.tokenizer",
    "generate": "r1kit.generation",
    "Completion": "r1kit.generation",
    "ModelConfig": "r1kit.models.config",
}

__all__ = ["Completion", "ModelConfig", "generate", "load_model", "load_tokenizer", "save_model"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'r1kit' has no attribute {name!r}")
