"""`r1kit serve`: the OpenAI-compatible server on uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from r1kit.generation.cli import add_compile_arg, add_precision_args, add_tool_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI API (reasoning_content apart from content)",
                       description="Serve a model with an OpenAI-compatible HTTP API: /v1/chat/completions, "
                                   "/v1/completions, /v1/models, /health. Binds to loopback unless --host says "
                                   "otherwise.")
    p.add_argument("--model", required=True, help="preset, HF checkpoint directory or .gguf file")
    p.add_argument("--served-model-name", default=None,
                   help="the name clients pass as `model` (default: the --model argument's base name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("R1KIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $R1KIT_API_KEY; unset: open)")
    p.add_argument("--max-concurrency", type=int, default=16,
                   help="requests decoded together (KV-cache rows); more wait in the queue")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond which the server answers 429")
    p.add_argument("--max-seq-len", type=int, default=4096,
                   help="context per request, prompt and reply (capped at the model's); sizes the KV cache")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take, queueing included; then it stops with finish_reason 'length'")
    add_precision_args(p)
    add_tool_args(p)  # the server-side Python interpreter, run in the sandbox inside the model's reasoning
    add_compile_arg(p)
    p.add_argument("--no-prompt-cache", dest="prompt_cache", action="store_false",
                   help="prefill every prompt in full (default: a free row keeps its last request's K/V and a "
                        "prompt starting with those tokens prefills only the rest)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_serve)


def served_name(model: str) -> str:
    """'toy-moe' -> 'toy-moe'; '/ckpt/run1/' -> 'run1'; 'x/model.gguf' -> 'model'."""
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else (path.name or model)


def _serve(args) -> int:
    import torch
    import uvicorn

    from r1kit import load_model, load_tokenizer
    from r1kit.errors import ConfigError
    from r1kit.generation import Engine
    from r1kit.generation.cli import matmul_dtype, tool_config
    from r1kit.serving.app import ServerConfig, create_app
    from r1kit.tools.python import TOOL_INSTRUCTIONS

    for name in ("max_concurrency", "max_seq_len", "port"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_queue < 0 or args.request_timeout <= 0:
        raise ConfigError("--max-queue must be >= 0 and --request-timeout > 0")
    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device,
                       quantize=args.quantize).eval()
    engine = Engine(model, load_tokenizer(args.model), max_batch_size=args.max_concurrency,
                    max_seq_len=args.max_seq_len, matmul_dtype=matmul_dtype(args), tools=tool_config(args),
                    compile=args.compile, prompt_cache=args.prompt_cache)
    config = ServerConfig(model_name=args.served_model_name or served_name(args.model), api_key=args.api_key,
                          max_queue=args.max_queue, request_timeout_s=args.request_timeout,
                          default_system=TOOL_INSTRUCTIONS if args.tools else None)
    print(f"r1kit: serving '{config.model_name}' on http://{args.host}:{args.port}/v1 "
          f"({args.max_concurrency} concurrent, context {engine.max_seq_len})", flush=True)
    uvicorn.run(create_app(engine, config), host=args.host, port=args.port, log_level=args.log_level)
    return 0
