"""Peak memory of per-token log-probs, forward + backward: unchunked logits vs the fused chunked path.

The head is SmolLM2-135M's (d = 576, V = 49152) by default. "unchunked" is the plain computation (the full
[N, V] logits, `F.log_softmax`, gather); "fused" is `r1kit.training.logprobs.fused_logprobs`. Both compute
the gradient w.r.t. the hidden states and the head weight.

Memory is the peak *above* the inputs (h, W, targets) during forward + backward:
- CUDA: `torch.cuda.max_memory_allocated()` minus the allocation before the step, in this process;
- CPU: the process's peak RSS (`resource.getrusage(...).ru_maxrss`) minus its RSS before the step, in a
  fresh subprocess per setting (so one setting's peak cannot hide another's).

    python benchmarks/bench_logprob_memory.py                      # 1K, 4K, 8K tokens on the default device
    python benchmarks/bench_logprob_memory.py --tokens 1024 4096 --chunk-tokens 256 --entropy
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

MiB = 2**20


def step(mode: str, h, w, targets, args) -> None:
    """One forward + backward of sum(logp) (+ sum(entropy) with --entropy)."""
    if mode == "fused":
        from r1kit.training.logprobs import fused_logprobs

        logp, entropy = fused_logprobs(h, w, targets, temperature=args.temperature, chunk_tokens=args.chunk_tokens,
                                       with_entropy=args.entropy)
    else:
        logits = F.linear(h, w).float() / args.temperature  # [N, V]
        logp_all = F.log_softmax(logits, dim=-1)  # [N, V]
        logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1) if args.entropy else None
    loss = logp.sum() + (entropy.sum() if entropy is not None else 0.0)
    loss.backward()


def inputs(n: int, args, device):
    dtype = getattr(torch, args.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(n, args.dim, device=device, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(args.vocab, args.dim, device=device, generator=g) * 0.05).to(dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (n,), device=device, generator=g)
    return h, w, targets


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(mode: str, n: int, args, device) -> dict:
    """Peak bytes above the inputs and seconds of one forward + backward, in this process."""
    step(mode, *inputs(16, args, device), args)  # warm-up: library initialisation is not the step's memory
    h, w, targets = inputs(n, args, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss()
    t0 = time.perf_counter()
    step(mode, h, w, targets, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"peak_mib": (peak - base) / MiB, "seconds": time.perf_counter() - t0}


def run_setting(mode: str, n: int, args, device) -> dict:
    if device.type == "cuda":
        return measure(mode, n, args, device)
    child = [sys.executable, __file__, "--child", mode, str(n), *sys.argv[1:]]
    out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 8192], help="N, tokens per step")
    p.add_argument("--dim", type=int, default=576, help="hidden size d (SmolLM2-135M: 576)")
    p.add_argument("--vocab", type=int, default=49152, help="vocabulary size V (SmolLM2-135M: 49152)")
    p.add_argument("--chunk-tokens", type=int, default=1024, help="rows per chunk of the fused path")
    p.add_argument("--temperature", type=float, default=1.0, help="logits are divided by it")
    p.add_argument("--entropy", action="store_true", help="also compute the entropy and backprop through it")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of h and W")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args, device)))
        return

    print(f"device {device}, dtype {args.dtype}, d={args.dim}, V={args.vocab}, chunk_tokens={args.chunk_tokens}, "
          f"entropy={args.entropy}; peak memory above the inputs, forward + backward")
    print(f"{'tokens':>7} | {'unchunked MiB':>13} | {'fused MiB':>9} | {'unchunked s':>11} | {'fused s':>7}")
    rows = {}
    for n in args.tokens:
        rows[n] = {mode: run_setting(mode, n, args, device) for mode in ("unchunked", "fused")}
        u, f = rows[n]["unchunked"], rows[n]["fused"]
        print(f"{n:>7} | {u['peak_mib']:>13.0f} | {f['peak_mib']:>9.0f} | {u['seconds']:>11.2f} | "
              f"{f['seconds']:>7.2f}", flush=True)
    for n in args.tokens:
        print(f"ratio unchunked/fused peak memory at {n} tokens: "
              f"{rows[n]['unchunked']['peak_mib'] / rows[n]['fused']['peak_mib']:.2f}")
    f32 = 4
    for a, b in zip(args.tokens, args.tokens[1:]):
        dn = b - a
        du = rows[b]["unchunked"]["peak_mib"] - rows[a]["unchunked"]["peak_mib"]
        df = rows[b]["fused"]["peak_mib"] - rows[a]["fused"]["peak_mib"]
        print(f"growth {a}->{b} tokens: unchunked {du:+.0f} MiB (= {du * MiB / (dn * args.vocab * f32):.2f} x "
              f"tokens*V*4 B), fused {df:+.0f} MiB (= {df * MiB / (dn * args.dim * f32):.2f} x tokens*d*4 B)")


if __name__ == "__main__":
    main()
