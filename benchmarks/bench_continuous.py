"""Continuous batching with staggered finishes: r1kit's engine with and without row compaction, same run.

`--requests` chat requests on SmolLM2-135M through 16 cache rows, greedy, each with its own max_new_tokens
(uniform in `--new-tokens LO HI`, fixed seed), EOS ignored, so requests finish at different steps and new ones take their rows (as in GRPO rollouts,
rejection sampling, evaluation and serving). Without compaction the running rows scatter and every layer of
every decode step gathers their K/V history; with it they stay in rows 0..n-1 and the cache is sliced.
Runs are interleaved; prints the best tokens/s of each and the ratio.

    .venv/bin/python benchmarks/bench_continuous.py [--requests 24] [--new-tokens 256 768] [--repeats 1]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import r1kit
from r1kit.generation import Engine, SamplingParams
from r1kit.models.checkpoint import smollm2_gguf_path

QUESTIONS = ["What is 17 + 25?", "Name three colors.", "Write a haiku about the sea.", "Why is the sky blue?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--bf16-matmuls", action="store_true")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, nargs=2, default=[256, 768], metavar=("LO", "HI"))
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    path = smollm2_gguf_path()
    tok = r1kit.load_tokenizer(path)
    model = r1kit.load_model(path, dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16).eval()
    rng = random.Random(0)
    prompts = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.requests)]
    params = [SamplingParams(max_new_tokens=rng.randint(*args.new_tokens), temperature=0, ignore_eos=True)
              for _ in prompts]
    max_seq_len = args.new_tokens[1] + 64  # the chat prompts are under 64 tokens
    tokens = sum(p.max_new_tokens for p in params)
    matmul = torch.bfloat16 if args.bf16_matmuls else None

    def run(compact: bool) -> float:
        engine = Engine(model, tok, max_batch_size=16, max_seq_len=max_seq_len, matmul_dtype=matmul)
        if not compact:
            engine._compact = lambda: None  # the ablation: rows stay where they were admitted
        t0 = time.perf_counter()
        engine.generate(prompts, params)
        return tokens / (time.perf_counter() - t0)

    rates = {"compacted": [], "scattered": []}
    for _ in range(args.repeats):
        rates["compacted"].append(run(True))
        rates["scattered"].append(run(False))
    best = {k: max(v) for k, v in rates.items()}
    print(f"SmolLM2-135M {args.dtype}{' + bf16 matmuls' if matmul else ''}, {args.requests} requests through "
          f"16 rows, {args.new_tokens[0]}-{args.new_tokens[1]} new tokens each ({tokens} in all), "
          f"{torch.get_num_threads()} threads")
    print(f"compacted rows {best['compacted']:.1f} tok/s, scattered rows {best['scattered']:.1f} tok/s, "
          f"ratio {best['compacted'] / best['scattered']:.2f}")


if __name__ == "__main__":
    main()
