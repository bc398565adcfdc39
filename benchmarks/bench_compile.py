"""Ablation: r1kit's decode step eager vs compiled (`Engine(compile=True)`, `--compile`), SmolLM2-135M, one run.

Greedy, `--new-tokens` tokens per sequence (EOS ignored), batch sizes `--batches`, for each setting: fp32 and int4
(the shipped GGUF's Q4 codes, `--quantize int4`). (bf16 matmuls on oneDNN-packed weights do not compile: the
engine refuses the combination.) The compiled engine is warmed up first (its compile time is printed apart); the two are then
timed interleaved, best of `--repeats`. Throughput counts prompt processing too (time to the last token).

    .venv/bin/python benchmarks/bench_compile.py [--settings int4 fp32] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import time

import torch

import r1kit
from r1kit.generation import Engine, SamplingParams
from r1kit.models.checkpoint import smollm2_gguf_path

SETTINGS = {"int4": {"quantize": "int4"}, "fp32": {}}
QUESTIONS = ["What is 17 + 25?", "Name three colors.", "Write a haiku about the sea.", "Why is the sky blue?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = smollm2_gguf_path()
    tok = r1kit.load_tokenizer(path)
    n = args.new_tokens
    print(f"SmolLM2-135M, greedy, {n} new tokens, {torch.get_num_threads()} threads")
    for setting in args.settings:
        model = r1kit.load_model(path, **SETTINGS[setting]).eval()
        for batch in args.batches:
            prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                               tokenize=False, add_generation_prompt=True) for i in range(batch)]
            ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
            params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
            engines = {name: Engine(model, tok, max_batch_size=batch, max_seq_len=max(map(len, ids)) + n + 1,
                                    compile=name == "compiled")
                       for name in ("eager", "compiled")}
            t0 = time.perf_counter()
            warm = engines["compiled"].generate(ids, params)
            compile_s = time.perf_counter() - t0
            same = [c.token_ids for c in warm] == [c.token_ids for c in engines["eager"].generate(ids, params)]
            rates = {name: [] for name in engines}
            for _ in range(args.repeats):
                for name, engine in engines.items():
                    t0 = time.perf_counter()
                    engine.generate(ids, params)
                    rates[name].append(batch * n / (time.perf_counter() - t0))
            eager, compiled = max(rates["eager"]), max(rates["compiled"])
            print(f"{setting:>12} batch {batch:>2}: eager {eager:6.1f} tok/s, compiled {compiled:6.1f} tok/s, "
                  f"ratio {compiled / eager:.2f}x (first call with compile {compile_s:.0f} s; same tokens: {same})",
                  flush=True)


if __name__ == "__main__":
    main()
