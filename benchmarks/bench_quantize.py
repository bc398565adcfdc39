"""Weight-only quantization on SmolLM2-135M (GGUF): quality and batch-1 decode speed against fp32, one run.

Rows: fp32 (the reference), bf16, int8 (per channel), int4 with groups of 32 and 128 (output head int8, the
default), int4 g32 with an int4 head too, and int4 g32 built from the GGUF file's own 4-bit codes. Columns:
- ppl: perplexity of the fixed English text below (one full-sequence forward, no chat template).
- prefix: mean fraction of the fp32 greedy continuation (--new-tokens per prompt, EOS ignored) that the variant
  reproduces before its first differing token.
- top1: teacher-forced agreement: fraction of positions of the fp32 greedy continuation where the variant's
  argmax is the fp32 token (does not compound after a first divergence).
- tok/s: greedy decode at batch 1 through the engine (prompt processing included), best of --repeats runs,
  the variants interleaved so machine noise hits all alike; ratio = tok/s / fp32 tok/s.

Caveat, stated in the output too: the only SmolLM2 weights shipped are a Q4_1 GGUF (4-bit codes, blocks of 32,
min/max), so "fp32" is that Q4_1 model dequantized and int4 g32 min/max re-quantization lands on nearly the same
grid: its quality columns say little about quantizing a bf16 original. The g128 and int8 rows do re-quantize.

    .venv/bin/python benchmarks/bench_quantize.py [--new-tokens 64] [--repeats 2] [--threads N] [--variants int8,bf16]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

import r1kit
from r1kit.generation import Engine, SamplingParams
from r1kit.models.checkpoint import smollm2_gguf_path
from r1kit.models.gguf import read_gguf_int4_codes
from r1kit.models.quantize import quantize_model

TEXT = """\
The river starts as a thin line of water high in the hills, where snow melts slowly through the spring. \
By the time it reaches the valley it has gathered the streams of a dozen smaller creeks, and it moves with a \
steady, patient strength. Farmers along its banks have used that water for centuries. They dug narrow channels \
to carry it into their fields, and they learned which years would bring floods and which would bring drought.

In the town at the bend of the river, the market opens early on Saturday mornings. People arrive with baskets \
of apples, jars of honey, loaves of bread and bundles of firewood. Children run between the stalls while their \
parents argue cheerfully about prices. An old man plays the violin near the fountain, and a small crowd gathers \
to listen before moving on to buy vegetables for the week.

Scientists who study rivers measure how much water flows past a point each second. They also track the \
temperature of the water, the amount of sediment it carries, and the health of the fish that live in it. Over \
many years these measurements show how the river responds to changes in rainfall, to new dams, and to the \
growth of nearby cities. Good records make it possible to plan for the future instead of guessing.

When evening comes, the light turns gold and the surface of the water grows calm. Birds settle in the reeds, \
and the sounds of the town fade. A boat drifts slowly toward the dock, its engine quiet, and the people on \
board watch the first stars appear above the hills where the river began.
"""
QUESTIONS = ["What is 17 + 25?", "Name three colors.", "Write a haiku about the sea.", "Why is the sky blue?"]


def variants(fp32: torch.nn.Module, gguf_codes: dict) -> dict[str, torch.nn.Module]:
    def quantized(bits, group_size=None, **kw):
        return quantize_model(copy.deepcopy(fp32), bits, group_size, **kw).eval()

    return {
        "fp32": fp32,
        "bf16": copy.deepcopy(fp32).to(torch.bfloat16),
        "int8": quantized(8),
        "int4 g32": quantized(4, 32),
        "int4 g128": quantized(4, 128),
        "int4 g32, int4 head": quantized(4, 32, head_bits=4),
        "int4 g32 (GGUF codes)": quantized(4, 32, int4_codes=gguf_codes),
    }


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor) -> float:
    logits = model(ids).float()  # (1, T, V)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return math.exp(nll.item())


@torch.inference_mode()
def top1_agreement(model, prompt_ids: list[list[int]], reference: list[list[int]]) -> float:
    hits = total = 0
    for p, ref in zip(prompt_ids, reference):
        ids = torch.tensor([p + ref])
        pred = model(ids)[0, len(p) - 1: -1].argmax(dim=-1)  # predictions of the continuation's tokens
        hits += (pred == torch.tensor(ref)).sum().item()
        total += len(ref)
    return hits / total


def prefix_agreement(ours: list[list[int]], reference: list[list[int]]) -> float:
    fractions = []
    for a, b in zip(ours, reference):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(b))
        fractions.append(same / len(b))
    return sum(fractions) / len(fractions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--variants", default=None, help="comma-separated subset of the rows (fp32 is always measured)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.new_tokens
    path = smollm2_gguf_path()
    tok = r1kit.load_tokenizer(path)
    fp32 = r1kit.load_model(path).eval()
    models = variants(fp32, read_gguf_int4_codes(path))
    if args.variants:
        keep = {"fp32", *args.variants.split(",")}
        models = {name: m for name, m in models.items() if name in keep}
    text_ids = torch.tensor([tok(TEXT).input_ids])
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in QUESTIONS]
    prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    greedy = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
    seq_len = max(map(len, prompt_ids)) + n + 1

    outputs = {name: [c.token_ids for c in Engine(m, tok, max_batch_size=len(prompts), max_seq_len=seq_len)
                      .generate(prompt_ids, greedy)] for name, m in models.items()}
    engines = {name: Engine(m, tok, max_batch_size=1, max_seq_len=seq_len) for name, m in models.items()}
    rates = {name: 0.0 for name in models}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.generate(prompt_ids[:1], greedy)
            rates[name] = max(rates[name], n / (time.perf_counter() - t0))

    print(f"SmolLM2-135M-Instruct ({path.name}), {text_ids.shape[1]}-token text, {len(prompts)} prompts x {n} greedy "
          f"tokens, batch-1 decode best of {args.repeats}, {torch.get_num_threads()} threads")
    print(f"{'variant':<24}{'ppl':>8}{'prefix':>8}{'top1':>7}{'tok/s':>8}{'ratio':>7}")
    for name, m in models.items():
        print(f"{name:<24}{perplexity(m, text_ids):>8.3f}{prefix_agreement(outputs[name], outputs['fp32']):>8.3f}"
              f"{top1_agreement(m, prompt_ids, outputs['fp32']):>7.3f}{rates[name]:>8.1f}"
              f"{rates[name] / rates['fp32']:>7.2f}")
    print("note: fp32 is the shipped Q4_1 GGUF dequantized; int4 g32 re-quantizes onto (nearly) the same grid.")


if __name__ == "__main__":
    main()
