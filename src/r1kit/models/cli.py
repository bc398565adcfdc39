"""`r1kit params`: parameter counts of a preset or checkpoint, without allocating weights."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="count total / active / MTP parameters of a model (no weights allocated)",
                       description="Count parameters on the meta device. total includes the fp32 router biases; "
                                   "active = parameters used per token (embedding and head included); "
                                   "mtp = the multi-token-prediction modules' own weights.")
    p.add_argument("model", help="preset name, HF checkpoint directory or .gguf file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_params)
    register_export(sub)


def _params(args) -> int:
    from pathlib import Path

    from r1kit.models.checkpoint import resolve_source
    from r1kit.models.config import get_preset, load_hf_config
    from r1kit.models.params import count_params

    source = resolve_source(args.model)
    if isinstance(source, str):
        cfg = get_preset(source)
    elif Path(source).is_dir():
        cfg = load_hf_config(source)
    else:
        from r1kit.models.gguf import read_gguf

        cfg, _ = read_gguf(Path(source))
    counts = count_params(cfg)
    if args.json:
        print(json.dumps(counts))
    else:
        for k, v in counts.items():
            print(f"{k:>16}: {v:,}")
    return 0


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a training checkpoint as an HF safetensors directory",
                       description="Export the model of a checkpoint (sharded or not, saved at any number of "
                                   "processes), or of a run directory's latest checkpoint, as an HF directory "
                                   "(config.json, safetensors, tokenizer) that transformers loads.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="run directory or checkpoints/step-N directory")
    p.add_argument("out", help="output directory (replaced atomically)")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from r1kit.training.checkpointing import export_checkpoint

    print(export_checkpoint(args.source, args.out))
    return 0
