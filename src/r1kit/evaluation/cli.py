"""`r1kit eval`: evaluate a model on a benchmark under the R1 protocol; prints a table or the summary JSON."""

from __future__ import annotations

import argparse
import json
import re

from r1kit.evaluation.harness import EvalConfig
from r1kit.generation.cli import (
    add_backend_args,
    add_precision_args,
    add_tool_args,
    load_backend,
    tool_config,
)

# argparse dest -> EvalConfig field; defaults stay in EvalConfig (argparse defaults are None = "not given").
_FIELDS = (
    "samples",
    "limit",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "batch_size",
    "level",
    "data",
)


def register(subparsers) -> None:
    d = EvalConfig
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a benchmark (pass@1, pass@k, cons@k)",
        description="Sample k answers per problem (R1 protocol: temperature 0.6, top-p 0.95, "
        "no system prompt), grade them, and write samples.jsonl, summary.json, report.md and a length "
        "plot to --out. Rerunning with the same --out resumes: cached samples are not regenerated.",
    )
    p.add_argument(
        "--model", required=True, help="preset name (e.g. smollm2-135m), HF directory or .gguf file"
    )
    p.add_argument(
        "--benchmark",
        required=True,
        help="aime24, math500, gpqa-diamond, mmlu, livecodebench, gsm8k, humaneval, a synthetic task "
        "(synthetic:addition, countdown, ...), or a YAML/JSON benchmark file",
    )
    p.add_argument(
        "--data",
        help="data file (JSONL/JSON/Parquet/CSV) or hf:owner/name:split; "
        "default $R1KIT_DATA/<benchmark>/<file>",
    )
    p.add_argument(
        "--samples", type=int, help="k samples per problem (default: the benchmark's, e.g. 64 for aime24)"
    )
    p.add_argument(
        "--limit", type=int, help="only the first N problems (synthetic: N generated, default 100)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, help=f"generation budget (default {d.max_new_tokens}; R1: 32768)"
    )
    p.add_argument("--temperature", type=float, help=f"sampling temperature (default {d.temperature})")
    p.add_argument("--top-p", type=float, help=f"nucleus sampling (default {d.top_p})")
    p.add_argument("--top-k", type=int, help=f"top-k sampling, 0 = off (default {d.top_k})")
    p.add_argument("--batch-size", type=int, help=f"prompts per generation call (default {d.batch_size})")
    p.add_argument("--seed", type=int, help=f"base seed of every sample (default {d.seed})")
    p.add_argument("--level", type=int, help=f"synthetic task difficulty 1-5 (default {d.level})")
    p.add_argument("--out", help="output directory (default runs/eval/<model>__<benchmark>)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_precision_args(p)
    add_tool_args(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_backend_args(p)
    p.set_defaults(func=_run)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.rstrip("/").split("/")[-1]) or "model"


def format_table(summary: dict, out_dir: str) -> str:
    from r1kit.evaluation.report import score_lines

    rows = [
        *score_lines(summary),
        ("mean tokens", f"{summary['mean_tokens']:.1f}"),
        ("truncated", f"{100 * summary['truncation_rate']:.1f}%"),
    ]
    if "tool_calls_per_reply" in summary:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
        rows += [("tool calls / reply", f"{summary['tool_calls_per_reply']:.2f}"),
                 ("tool error rate", pct(summary["tool_error_rate"])),
                 ("pass@1 with a call", pct(summary["accuracy_with_tool"])),
                 ("pass@1 without", pct(summary["accuracy_without_tool"]))]
    size = f"{summary['problems']} problems x {summary['samples']} samples"
    head = f"{summary['benchmark']} | {summary['model']} | {size}"
    width = max(len(k) for k, _ in rows)
    return "\n".join([head, *[f"  {k:<{width}}  {v}" for k, v in rows], f"  report: {out_dir}/report.md"])


def _model_id(args: argparse.Namespace) -> str:
    """The model's name in the sample cache and report; a non-default precision or backend is part of it, so
    rerunning into the same --out with other settings regenerates instead of mixing samples."""
    extras = [args.dtype] if args.dtype != "float32" else []
    extras += ["bf16 matmuls"] if args.bf16_matmuls else []
    extras += ["vllm"] if args.backend == "vllm" else []
    extras += [args.quantize] if args.quantize else []
    return f"{args.model} [{', '.join(extras)}]" if extras else args.model


def _run(args: argparse.Namespace) -> int:
    import torch

    from r1kit.evaluation.benchmarks import get_benchmark, load_problems
    from r1kit.evaluation.harness import evaluate

    overrides = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
    config = EvalConfig(**overrides, tools=tool_config(args))
    bench = get_benchmark(args.benchmark)
    load_problems(
        bench, data=config.data, limit=1, seed=config.seed, level=config.level
    )  # fail before loading
    out_dir = args.out or f"runs/eval/{_slug(args.model)}__{_slug(bench.name)}"
    model, tokenizer = load_backend(args)
    summary = evaluate(
        model,
        tokenizer,
        bench,
        config=config,
        out_dir=out_dir,
        model_id=_model_id(args),
        progress=not args.no_progress,
        matmul_dtype=torch.bfloat16 if args.bf16_matmuls else None,  # the continuous engine, in bf16 matmuls
    )
    print(json.dumps(summary, indent=2) if args.json else format_table(summary, out_dir))
    return 0
