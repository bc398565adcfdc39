"""Decode tokens/s: r1kit's engine vs transformers `generate` on SmolLM2-135M (GGUF), same run, same settings.

Greedy, `--new-tokens` tokens per sequence (EOS ignored by both so lengths match), batch 1 and batch 16 of
the same chat prompts, on CPU, in each of `--dtypes` (both libraries in the same dtype; the runs are interleaved
so machine noise hits both alike). Throughput counts prompt processing too (time to the last token). Also prints
r1kit's batch-1 decode against the memory-bandwidth bound (weight bytes read per token / measured copy bandwidth), and, for fp32, r1kit with bf16 matmuls on packed
weights (GRPO's `rollout_dtype: bfloat16`).

    .venv/bin/python benchmarks/bench_decode.py [--new-tokens 128] [--batches 1 16] [--dtypes fp32 bf16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

import r1kit
from r1kit.generation import Engine, SamplingParams
from r1kit.models.checkpoint import smollm2_gguf_path

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QUESTIONS = ["What is 17 + 25?", "Name three colors.", "Write a haiku about the sea.", "Why is the sky blue?"]


def copy_bandwidth(nbytes: int = 512 * 1024**2) -> float:
    src = torch.empty(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    return 2 * nbytes * 5 / (time.perf_counter() - t0)  # read + write bytes per second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for name in args.dtypes:
        bench_dtype(args, name)


def bench_dtype(args, dtype_name: str) -> None:
    dtype = DTYPES[dtype_name]
    path = smollm2_gguf_path()
    tok = r1kit.load_tokenizer(path)
    ours = r1kit.load_model(path, dtype=dtype).eval()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    n = args.new_tokens
    print(f"SmolLM2-135M {dtype_name}, greedy, {n} new tokens, {torch.get_num_threads()} threads")
    for batch in args.batches:
        prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                           tokenize=False, add_generation_prompt=True) for i in range(batch)]
        ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        engine = Engine(ours, tok, max_batch_size=batch, max_seq_len=max(map(len, ids)) + n + 1)
        params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

        def run_ours(engine=engine, ids=ids, params=params):
            return engine.generate(ids, params)

        # fp32 weights with bf16 matmuls on packed weights: how GRPO's `rollout_dtype: bfloat16` samples
        mixed = Engine(ours, tok, max_batch_size=batch, max_seq_len=max(map(len, ids)) + n + 1,
                       matmul_dtype=torch.bfloat16) if dtype == torch.float32 else None

        def run_mixed(engine=mixed, ids=ids, params=params):
            return engine.generate(ids, params)

        def run_ref(enc=enc):
            with torch.inference_mode():
                return ref.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    pad_token_id=tok.pad_token_id or 0)

        runners = {"r1kit": run_ours, "transformers": run_ref, **({"mixed": run_mixed} if mixed else {})}
        rates = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                rates[name].append(batch * n / (time.perf_counter() - t0))
        best = {k: max(v) for k, v in rates.items()}
        print(f"{dtype_name} batch {batch:>2}: r1kit {best['r1kit']:.1f} tok/s, transformers {best['transformers']:.1f} tok/s, "
              f"ratio {best['r1kit'] / best['transformers']:.2f}")
        if mixed:
            print(f"{dtype_name} batch {batch:>2}: r1kit with bf16 matmuls {best['mixed']:.1f} tok/s, "
                  f"ratio {best['mixed'] / best['transformers']:.2f}")
        if batch == 1:
            weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
            bound = copy_bandwidth() / weight_bytes
            print(f"{dtype_name} batch  1: memory-bandwidth bound {bound:.1f} tok/s ({weight_bytes / 1e6:.0f} MB of weights per "
                  f"token); r1kit reaches {100 * best['r1kit'] / bound:.0f}% of it")


if __name__ == "__main__":
    main()
