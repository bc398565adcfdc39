"""Training subcommands (`pretrain`, `sft`, `grpo`, `rejection-sample`, `distill`), one per row of `RECIPES`."""

from __future__ import annotations

import argparse

from r1kit.training.recipes import RECIPES, RecipeSpec


def register(sub: argparse._SubParsersAction) -> None:
    for spec in RECIPES.values():
        p = sub.add_parser(spec.command, help=spec.help, description=spec.description)
        p.add_argument("--config", help=f"YAML config (fields of {spec.config})")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a field, e.g. {spec.example}")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(func=lambda args, spec=spec: _run(args, spec))


def _run(args, spec: RecipeSpec) -> int:
    import json

    from r1kit.config import load_config

    config_cls, run = spec.load()
    cfg = load_config(config_cls, args.config, args.overrides)  # errors name the field, before any work
    result = run(cfg)
    print(json.dumps(result) if args.json else spec.summarize(cfg, result))
    return 0
