"""Forward+backward tokens/s: r1kit's toy DeepSeek-V3 MoE vs transformers' DeepseekV3ForCausalLM.

Same config, same weights (r1kit saves, transformers loads), same batch, fp32, CPU, in one run; the two
are timed alternately so machine noise hits both. Prints tokens/s of each and the ratio.

    .venv/bin/python benchmarks/bench_model.py [--preset toy-moe] [--batch 8] [--seq 256] [--iters 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

import r1kit


def step(fn, ids) -> float:
    t0 = time.perf_counter()
    logits = fn(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="toy-moe")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    ours = r1kit.load_model(args.preset).train()
    with tempfile.TemporaryDirectory() as d:
        r1kit.save_model(ours, d)
        ref = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="sdpa").train()
    ids = torch.randint(3, ours.config.vocab_size, (args.batch, args.seq))
    runners = {"r1kit": lambda x: ours(x), "transformers": lambda x: ref(input_ids=x).logits}
    for fn in runners.values():  # warm-up
        step(fn, ids)
    times = {k: [] for k in runners}
    for _ in range(args.iters):
        for name, fn in runners.items():
            times[name].append(step(fn, ids))
    tokens = args.batch * args.seq
    rate = {k: tokens / sorted(v)[len(v) // 2] for k, v in times.items()}  # median
    print(f"config {args.preset}: batch {args.batch} x seq {args.seq}, fp32, {torch.get_num_threads()} threads")
    for k, v in rate.items():
        print(f"{k:>12}: {v:,.0f} tokens/s (forward+backward, median of {args.iters})")
    print(f"ratio r1kit/transformers: {rate['r1kit'] / rate['transformers']:.2f}")


if __name__ == "__main__":
    main()
