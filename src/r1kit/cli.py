"""The `r1kit` command. Thin: each area registers its subcommands; handlers import heavy modules lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

from r1kit.errors import R1kitError

# Each module defines `register(subparsers)`, adding its subcommands with `set_defaults(func=handler)`.
_COMMAND_MODULES = [
    "r1kit.models.cli",
    "r1kit.generation.cli",
    "r1kit.training.cli",
    "r1kit.evaluation.cli",
    "r1kit.serving.cli",
    "r1kit.pipeline",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1kit", description="Build, train, distill, evaluate and serve DeepSeek-R1-style reasoning models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:  # a module that fails to import is an error, never a missing subcommand
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except R1kitError as e:
        print(f"r1kit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nr1kit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
