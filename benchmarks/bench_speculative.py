"""MTP speculative decoding vs plain decoding, same model, same run: acceptance rate and speedup.

The model should have a trained MTP head (`r1kit pretrain` trains it with the main model; a random one is rarely
right). Default: the toy MoE pretrained by the toy recipe, if a checkpoint is at --model. `--rows` requests of
`--new-tokens` each from short prompts, greedy (`--temperature 0`, output identical) or sampled. Runs are
interleaved; prints the best tokens/s of each, the acceptance rate of the drafts and the ratio.

    .venv/bin/python benchmarks/bench_speculative.py --model runs/toy/pretrain/final [--rows 1] [--new-tokens 256]
        [--temperature 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import r1kit
from r1kit.generation import Engine, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a checkpoint with an MTP head (or a preset)")
    ap.add_argument("--rows", type=int, default=1, help="concurrent requests")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = r1kit.load_model(args.model).eval()
    tok = r1kit.load_tokenizer(args.model) if not args.model.startswith("toy") else None
    if tok is None:
        from r1kit.tokenizer import toy_tokenizer

        tok = toy_tokenizer()
    texts = ["<bos>12+35=", "<bos>Q: 7*8? A:", "<bos>the sum of 3 and 4 is", "<bos>17-9="]
    prompts = [tok(texts[i % len(texts)], add_special_tokens=False).input_ids for i in range(args.rows)]
    params = [SamplingParams(max_new_tokens=args.new_tokens, temperature=args.temperature, seed=i, ignore_eos=True)
              for i in range(args.rows)]
    max_seq_len = max(map(len, prompts)) + args.new_tokens + 1

    def run(speculative: str | None) -> tuple[float, Engine, list]:
        engine = Engine(model, tok, max_batch_size=args.rows, max_seq_len=max_seq_len, speculative=speculative)
        t0 = time.perf_counter()
        out = engine.generate(prompts, params)
        return args.rows * args.new_tokens / (time.perf_counter() - t0), engine, out

    rates = {"plain": [], "mtp": []}
    for _ in range(args.repeats):
        rate, _, plain = run(None)
        rates["plain"].append(rate)
        rate, engine, fast = run("mtp")
        rates["mtp"].append(rate)
    same = sum(a.token_ids == b.token_ids for a, b in zip(plain, fast))
    best = {k: max(v) for k, v in rates.items()}
    print(f"{args.model}, {args.rows} rows x {args.new_tokens} new tokens, temperature {args.temperature}, "
          f"{torch.get_num_threads()} threads")
    print(f"acceptance {engine.accepted / max(1, engine.drafted):.3f} ({engine.accepted}/{engine.drafted} drafts), "
          f"{args.rows * (args.new_tokens - 1) / max(1, engine.drafted):.2f} tokens per verify step"
          + (f", greedy outputs identical {same}/{args.rows}" if args.temperature == 0 else ""))
    print(f"plain {best['plain']:.1f} tok/s, mtp {best['mtp']:.1f} tok/s, ratio {best['mtp'] / best['plain']:.2f}")


if __name__ == "__main__":
    main()
