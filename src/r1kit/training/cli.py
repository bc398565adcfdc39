"""Training subcommands: each recipe module registers its own (`pretrain`, `sft`, `grpo`, ...)."""

from __future__ import annotations

import argparse
import importlib

_RECIPES = ["r1kit.training.sft", "r1kit.training.grpo", "r1kit.training.rejection", "r1kit.training.distill"]


def add_recipe_command(sub: argparse._SubParsersAction, name: str, config_cls, recipe, summarize, *, help: str,
                       description: str, example: str = "--set optim.lr=3e-4") -> None:
    """A training subcommand: `--config FILE`, `--set KEY=VALUE` overrides, `--json`; runs recipe(config).

    summarize(config, result) -> the one line printed without --json."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", help=f"YAML config (fields of {config_cls.__name__})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a field, e.g. {example}")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=lambda args: _run(args, config_cls, recipe, summarize))


def _run(args, config_cls, recipe, summarize) -> int:
    import json

    from r1kit.config import load_config

    cfg = load_config(config_cls, args.config, args.overrides)  # errors name the field, before any work
    result = recipe(cfg)
    print(json.dumps(result) if args.json else summarize(cfg, result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for name in _RECIPES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
