"""`r1kit params`: parameter counts of a preset or checkpoint, without allocating weights.
`r1kit quantize`: write a weight-only int8/int4 copy of a model (see models/quantize.py)."""

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

    q = sub.add_parser("quantize", help="write a weight-only int8 / int4 quantized copy of a model",
                       description="Quantize the linear layers and routed experts (weight-only: int8 per output "
                                   "channel, or int4 per group of inputs) and save an HF-style directory with a "
                                   "quantization_config that r1kit loads (transformers does not). The output head "
                                   "stays int8 unless --head-bits 4. A GGUF's Q4_0/Q4_1 weights keep their codes "
                                   "at --bits 4 --group-size 32.")
    q.add_argument("model", help="preset name, HF checkpoint directory or .gguf file")
    q.add_argument("out", help="output directory (written atomically)")
    q.add_argument("--bits", type=int, choices=[8, 4], required=True, help="8: int8 per channel; 4: int4 per group")
    q.add_argument("--group-size", type=int, choices=[32, 64, 128, 256], default=None,
                   help="inputs per int4 scale/zero (default 32); --bits 4 only")
    q.add_argument("--head-bits", type=int, choices=[8, 4], default=None, help="bits of the output head (default 8)")
    q.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of what stays float (embedding, norms, router); scales are bf16 either way")
    q.add_argument("--json", action="store_true", help="print a JSON summary")
    q.set_defaults(func=_quantize)
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


def _quantize(args) -> int:
    from pathlib import Path

    import torch

    from r1kit.errors import R1kitError
    from r1kit.models.checkpoint import load_model, resolve_source, save_model
    from r1kit.models.quantize import quantization_config, quantize_loaded

    if args.bits == 8 and args.group_size is not None:
        raise R1kitError("--group-size applies to --bits 4 only (int8 has one scale per output channel)")
    if _already_quantized(args.model):
        raise R1kitError(f"{args.model}: already quantized")
    group_size = None if args.bits == 8 else args.group_size or 32
    scheme = "int8" if args.bits == 8 else f"int4-g{group_size}"
    model = quantize_loaded(load_model(args.model, dtype=getattr(torch, args.dtype)), resolve_source(args.model),
                            args.bits, group_size, head_bits=args.head_bits)
    tokenizer = None
    if not isinstance(resolve_source(args.model), str) or args.model.startswith("toy"):
        from r1kit.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(args.model)
        except R1kitError:
            tokenizer = None  # a checkpoint without tokenizer files: weights only
    out = save_model(model, Path(args.out), tokenizer=tokenizer)
    files = sorted(out.glob("*.safetensors"))
    summary = {"out": str(out), "scheme": scheme, "modules": len(quantization_config(model)["modules"]),
               "bytes": sum(f.stat().st_size for f in files), "tokenizer": tokenizer is not None}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {out}: {scheme}, {summary['modules']} quantized modules, {summary['bytes'] / 1e6:.1f} MB of weights")
    return 0


def _already_quantized(model: str) -> bool:
    from pathlib import Path

    config = Path(model) / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())
