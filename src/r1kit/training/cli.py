"""Training subcommands: each recipe module registers its own (`pretrain`, `sft`, `grpo`, ...)."""

from __future__ import annotations

import argparse
import importlib

_RECIPES = ["r1kit.training.sft", "r1kit.training.grpo", "r1kit.training.rejection", "r1kit.training.distill"]


def register(sub: argparse._SubParsersAction) -> None:
    for name in _RECIPES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
