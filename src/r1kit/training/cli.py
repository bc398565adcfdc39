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
        p.add_argument("--device", help="auto | cpu | cuda | cuda:N (sets the config's device; default: auto)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(func=lambda args, spec=spec: _run(args, spec))


def _run(args, spec: RecipeSpec) -> int:
    import dataclasses
    import json

    from r1kit.config import load_config

    config_cls, run = spec.load()
    overrides = list(args.overrides)
    if args.device:
        has_run = any(f.name == "run" for f in dataclasses.fields(config_cls))
        overrides.append(f"{'run.' if has_run else ''}device={args.device}")
    cfg = load_config(config_cls, args.config, overrides)  # errors name the field, before any work
    result = run(cfg)
    print(json.dumps(result) if args.json else spec.summarize(cfg, result))
    return 0
