"""`r1kit generate` (one prompt, optionally JSON) and `r1kit chat` (interactive, streamed, reasoning dimmed)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _sampling_args(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--model", required=True, help="preset, HF checkpoint directory or .gguf file")
    p.add_argument("--system", default=None,
                   help="system message (with --tools python the default describes the interpreter; --system '' "
                        "sends none, for a model trained on the format)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    add_precision_args(p)


def add_precision_args(p: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype`, `--bf16-matmuls` and `--quantize` (shared by generate, chat, eval and serve)."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto = CUDA when present)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="model weights; bfloat16 decodes on oneDNN-packed weights on CPU (not bit-exact)")
    p.add_argument("--bf16-matmuls", action="store_true",
                   help="keep the weights in --dtype, run the linear layers in bf16 on packed weights: the "
                        "fastest CPU setting measured (benchmarks/bench_decode.py); not bit-exact")
    p.add_argument("--quantize", choices=["int8", "int4", "int4-g32", "int4-g64", "int4-g128", "gguf", "fp8"],
                   default=None,
                   help="weight-only quantize the linear layers after loading (a GGUF's Q4 weights keep their "
                        "codes); gguf: keep a .gguf file's own quantization (Q4_0/Q4_1 as int4, Q8_0 and others "
                        "as int8) instead of dequantizing it; fp8: keep an FP8 block-scaled checkpoint's (DeepSeek-V3/R1 "
                        "release) weights in FP8 instead of bf16; quality and speed in docs/quantization.md")


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    """`--compile` (generate, chat and serve: the engine's decode step through torch.compile)."""
    p.add_argument("--compile", action="store_true",
                   help="compile the decode step with torch.compile: the first reply waits for the compile "
                        "(minutes on a CPU), later steps run faster at small batches (README)")


def add_tool_args(p: argparse.ArgumentParser) -> None:
    """`--tools python` and the tool's limits (shared by generate, chat, eval and serve)."""
    g = p.add_argument_group("tools (docs/tools.md)")
    g.add_argument("--tools", choices=["python"], default=None,
                   help="python: the model may run Python in a sandbox while it reasons (<code> cells; the output "
                        "comes back in <interpreter> tags)")
    g.add_argument("--tool-timeout", type=float, default=5.0, help="seconds per call")
    g.add_argument("--tool-max-calls", type=int, default=4, help="calls per reply")


def tool_config(args):
    """The Engine's ToolConfig for the parsed flags, or None without --tools."""
    if getattr(args, "tools", None) != "python":
        return None
    from r1kit.tools.python import ToolConfig

    return ToolConfig(timeout=args.tool_timeout, max_calls=args.tool_max_calls)


def matmul_dtype(args):
    """The Engine's matmul_dtype for the parsed flags: torch.bfloat16 with --bf16-matmuls, else None."""
    import torch

    return torch.bfloat16 if getattr(args, "bf16_matmuls", False) else None


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """`--backend vllm` and the vLLM engine's sizing flags (shared by `generate` and `eval`)."""
    g = p.add_argument_group("vLLM backend (GPU machines with vllm installed; see docs/vllm.md)")
    g.add_argument("--backend", choices=["r1kit", "vllm"], default="r1kit",
                   help="vllm: generate with vLLM; --model is then an HF checkpoint directory or model id")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--max-model-len", type=int, default=None, help="default: the checkpoint's context length")


def load_backend(args):
    """(model, tokenizer): an r1kit model in args.dtype, or a VLLMEngine when args.backend == 'vllm'."""
    import torch

    from r1kit import load_model, load_tokenizer

    if getattr(args, "backend", "r1kit") == "vllm":
        from r1kit.errors import R1kitError
        from r1kit.generation import VLLMEngine

        if getattr(args, "quantize", None):
            raise R1kitError("--quantize is r1kit's own weight-only quantization; it does not apply to --backend vllm")

        engine = VLLMEngine(args.model, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                            tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len)
        return engine, engine.tokenizer
    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device,
                       quantize=getattr(args, "quantize", None))
    return model.eval(), load_tokenizer(args.model)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer one prompt; reasoning shown apart from the answer",
                       description="Generate a reply to one prompt with the model's chat template.")
    _sampling_args(p, temperature=0.6)
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help='print {"text","reasoning","answer","finish_reason","tokens"}')
    p.add_argument("--speculative", choices=["mtp"], default=None,
                   help="mtp: draft one token per step with the model's MTP head and verify it (same output "
                        "distribution; greedy output unchanged); pays when the drafts are mostly accepted")
    add_tool_args(p)
    add_compile_arg(p)
    add_backend_args(p)
    p.set_defaults(func=_generate)

    c = sub.add_parser("chat", help="interactive multi-turn chat in the terminal",
                       description="Chat with a model. Tokens stream as they come; reasoning is dimmed. "
                                   "Ctrl-C stops the current reply; Ctrl-D or /exit quits; /reset clears history.")
    _sampling_args(c, temperature=0.6)
    add_tool_args(c)
    add_compile_arg(c)
    c.set_defaults(func=_chat)


def _load(args):
    from r1kit.generation import SamplingParams

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, min_p=args.min_p, seed=args.seed, stop=getattr(args, "stop", []))
    return (*load_backend(args), params)


def _messages(args, history: list[dict], user: str) -> list[dict]:
    from r1kit.tools.python import TOOL_INSTRUCTIONS

    text = args.system if args.system is not None else (TOOL_INSTRUCTIONS if getattr(args, "tools", None) else None)
    system = [{"role": "system", "content": text}] if text else []
    return system + history + [{"role": "user", "content": user}]


def _generate(args) -> int:
    from r1kit.generation import Engine, VLLMEngine

    model, tok, params = _load(args)
    prompt = args.prompt if args.raw else _messages(args, [], args.prompt)
    if isinstance(model, VLLMEngine) and args.tools:
        from r1kit.errors import R1kitError

        raise R1kitError("--tools runs in r1kit's own engine; it does not apply to --backend vllm")
    engine = model if isinstance(model, VLLMEngine) else Engine(model, tok, max_batch_size=1,
                                                                 matmul_dtype=matmul_dtype(args),
                                                                 speculative=args.speculative, tools=tool_config(args),
                                                                 compile=args.compile)
    c = engine.generate([prompt], params)[0]
    if args.json:
        tools = {"tool_calls": [dataclasses.asdict(t) for t in c.tool_calls]} if args.tools else {}
        print(json.dumps({"text": c.text, "reasoning": c.reasoning, "answer": c.answer,
                          "finish_reason": c.finish_reason, "tokens": len(c.token_ids), **tools},
                         ensure_ascii=False))
    else:
        if c.reasoning:
            print(f"\033[2m{c.reasoning}\033[0m\n" if sys.stdout.isatty() else f"[reasoning]\n{c.reasoning}\n\n[answer]")
        print(c.answer)
    return 0


class _ReasoningPrinter:
    """Prints a streamed reply, its reasoning dimmed, split as it streams by `r1kit.reasoning.ReasoningStream`
    (the same split as `Completion.reasoning` / `.answer` and the server's `reasoning_content`)."""

    def __init__(self, prefilled: bool):
        from r1kit.reasoning import ReasoningStream

        self.split = ReasoningStream(prefilled)
        self.dimmed = False

    def feed(self, delta: str) -> None:
        self._write(*self.split.feed(delta))

    def close(self) -> None:
        self._write(*self.split.finish())
        sys.stdout.write("\033[0m\n")
        sys.stdout.flush()

    def _write(self, reasoning: str, answer: str) -> None:
        if reasoning:
            if not self.dimmed:
                sys.stdout.write("\033[2m")
                self.dimmed = True
            sys.stdout.write(reasoning)
        if answer:
            if self.dimmed:  # the stream never goes back to reasoning once the answer started
                sys.stdout.write("\033[0m\n")
                self.dimmed = False
            sys.stdout.write(answer)
        sys.stdout.flush()


def _chat(args) -> int:
    from r1kit.generation import Engine

    model, tok, params = _load(args)
    engine = Engine(model, tok, max_batch_size=1, matmul_dtype=matmul_dtype(args), tools=tool_config(args),
                    compile=args.compile, prompt_cache=True)  # each turn prefills only what the last one did not
    history: list[dict] = []
    print("r1kit chat — Ctrl-C stops a reply, Ctrl-D or /exit quits, /reset clears the history.")
    while True:
        try:
            user = input("\n> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if user in ("/exit", "/quit"):
            return 0
        if user == "/reset":
            history.clear()
            continue
        if not user:
            continue
        messages = _messages(args, history, user)
        _, prefilled = engine.encode(messages)
        printer = _ReasoningPrinter(prefilled)
        stream = engine.stream(messages, params)
        try:
            for delta in stream:
                printer.feed(delta)
        except KeyboardInterrupt:
            stream.close()  # aborts the request; the session goes on
            printer.close()
            print("[stopped]")
            continue
        printer.close()
        # the template drops earlier turns' reasoning; keep only the answer in the history
        history += [{"role": "user", "content": user},
                    {"role": "assistant", "content": engine.last_completion.answer or engine.last_completion.text}]
