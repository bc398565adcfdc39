"""Serving throughput: `r1kit serve` against `transformers serve --continuous-batching`, in one run.

Both servers load the same HF directory (SmolLM2-135M-Instruct, written once from its GGUF by `r1kit.save_model`),
in float32 on CPU, and get the same streamed chat requests: greedy, the same prompts, the same `max_tokens`.
For each number of concurrent clients, every client sends `--requests` requests one after another; we report
output tokens per second (tokens re-counted from the streamed text with the model's tokenizer, so both servers
are measured the same way whatever their chunking) and, at 1 client, the median time to first token. r1kit
also runs a second time with `--bf16-matmuls` (fp32 weights, bf16 matmuls on packed weights).

    .venv/bin/python benchmarks/bench_serve.py                        # 1, 8, 32 clients, 64 tokens each
    .venv/bin/python benchmarks/bench_serve.py --clients 1,8 --max-tokens 16 --requests 1   # a quick check

Prints one `ratio` line per measurement (r1kit / transformers; for TTFT, transformers / r1kit, so > 1 means
r1kit is better in every line).

Left out: GPU runs, prompt-heavy workloads (long prompts, prefix reuse), sampling (greedy keeps outputs equal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVERS = ["r1kit", "r1kit-bf16", "transformers"]  # r1kit-bf16: `r1kit serve --bf16-matmuls` (fp32 weights)
QUESTIONS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about the sea.",
    "Explain why the sky is blue to a child.",
    "List three uses of a paper clip.",
    "What is 17 times 23? Show your steps.",
    "Give me a recipe idea with tomatoes and rice.",
    "Describe a cat in two sentences.",
    "Why do we have seasons?",
]


@dataclass
class Result:
    tokens_per_s: float
    ttft_s: float  # median time to the first streamed text
    tokens: int
    wall_s: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_model(directory: Path) -> Path:
    """SmolLM2-135M as an HF directory both servers can load (transformers serve cannot read the GGUF's config)."""
    import r1kit
    from r1kit.models.checkpoint import smollm2_gguf_path

    if not (directory / "config.json").exists():
        gguf = smollm2_gguf_path()
        r1kit.save_model(r1kit.load_model(gguf), directory)
        r1kit.load_tokenizer(gguf).save_pretrained(directory)
    return directory


def start_server(name: str, model_dir: Path, port: int, max_concurrency: int, log: Path) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    if name.startswith("r1kit"):
        cmd = [str(bin_dir / "r1kit"), "serve", "--model", str(model_dir), "--served-model-name", "m",
               "--port", str(port), "--max-concurrency", str(max_concurrency), "--max-seq-len", "1024",
               "--log-level", "warning", *(["--bf16-matmuls"] if name == "r1kit-bf16" else [])]
    else:
        cmd = [str(bin_dir / "transformers"), "serve", "--continuous-batching", "--device", "cpu",
               "--dtype", "float32", "--port", str(port), "--log-level", "warning", str(model_dir)]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s")


async def one_request(http: httpx.AsyncClient, url: str, model: str, question: str, max_tokens: int):
    """Stream one chat completion; returns (text, seconds to first text)."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    start, first, text = time.perf_counter(), None, []
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            finished = False
            for choice in json.loads(line[6:]).get("choices", []):
                delta = choice.get("delta", {})
                piece = (delta.get("reasoning_content") or "") + (delta.get("content") or "")
                if piece:
                    first = first or time.perf_counter() - start
                    text.append(piece)
                finished = finished or bool(choice.get("finish_reason"))
            if finished:  # the reply is complete; do not time how the server closes the stream
                break
    return "".join(text), first if first is not None else float("nan")


async def measure(url: str, model: str, clients: int, requests: int, max_tokens: int, tokenizer) -> Result:
    async def client(c: int, http: httpx.AsyncClient):
        return [await one_request(http, url, model, QUESTIONS[(c + r) % len(QUESTIONS)], max_tokens)
                for r in range(requests)]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800.0), limits=limits) as http:
        start = time.perf_counter()
        per_client = await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - start
    replies = [r for rs in per_client for r in rs]
    tokens = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text, _ in replies)
    return Result(tokens / wall, statistics.median(t for _, t in replies), tokens, wall)


def bench_server(name: str, model_dir: Path, args, tokenizer, logs: Path) -> dict[int, Result]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model = "m" if name.startswith("r1kit") else str(model_dir)
    proc = start_server(name, model_dir, port, max(args.clients), logs / f"{name}.log")
    try:
        wait_healthy(url, proc)
        asyncio.run(measure(url, model, 1, 1, 4, tokenizer))  # warm-up: lazy loading, first-call costs
        results = {}
        for c in args.clients:
            results[c] = asyncio.run(measure(url, model, c, args.requests, args.max_tokens, tokenizer))
            r = results[c]
            print(f"{name:>12}  clients={c:<3} {r.tokens_per_s:8.1f} tok/s  ttft={r.ttft_s * 1000:7.0f} ms  "
                  f"({r.tokens} tokens in {r.wall_s:.1f} s)", flush=True)
        return results
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,8,32", help="comma-separated numbers of concurrent clients")
    p.add_argument("--requests", type=int, default=2, help="requests per client, sent one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model-dir", default=None, help="where to write/read the HF copy of SmolLM2-135M")
    p.add_argument("--only", choices=SERVERS, default=None, help="run one server only")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prepare_model(Path(args.model_dir or os.path.join(tmp, "smollm2-135m")))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        logs = Path(tmp)
        print(f"SmolLM2-135M float32, greedy, {args.max_tokens} max tokens, {args.requests} requests per client, "
              f"{os.cpu_count()} CPUs, torch threads default", flush=True)
        names = [args.only] if args.only else SERVERS
        results = {}
        for name in names:
            try:
                results[name] = bench_server(name, model_dir, args, tokenizer, logs)
            except (RuntimeError, TimeoutError, httpx.HTTPError) as e:
                log = (logs / f"{name}.log").read_text()[-2000:] if (logs / f"{name}.log").exists() else ""
                print(f"{name}: failed: {e}\n{log}", file=sys.stderr)
                return 1
    peer = results.get("transformers")
    for name in [n for n in results if n != "transformers"] if peer else []:
        ours = results[name]
        for c in args.clients:
            print(f"ratio tokens/s clients={c}: {name}/transformers = "
                  f"{ours[c].tokens_per_s / peer[c].tokens_per_s:.2f}x")
        if 1 in args.clients:
            print(f"ratio ttft clients=1: transformers/{name} = {peer[1].ttft_s / ours[1].ttft_s:.2f}x "
                  f"({peer[1].ttft_s * 1000:.0f} ms vs {ours[1].ttft_s * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
