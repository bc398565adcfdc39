"""SFT tokens/s on 1 process vs N processes (torchrun, FSDP2) on this machine, same config and global batch.

    python benchmarks/bench_scaling.py [--model toy-dense] [--procs 2] [--steps 8] [--device cpu]

Each run is a real `r1kit sft` command (`python -m r1kit` vs `torchrun --nproc-per-node N -m r1kit`); tokens/s
is the global batch's tokens over the step time, averaged over the steps after the first (warm-up), read from
metrics.jsonl. Prints one line per run and a `ratio` line (N processes / 1 process). On CPU each process gets
cpus / N threads, so the ratio measures what sharding costs or gains at equal total compute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(procs: int, args, out: Path) -> tuple[float, float, float]:
    sets = [f"model={args.model}", "tasks.num_train=256", f"batch.seq_len={args.seq_len}",
            f"batch.batch_size={args.batch_size}", f"run.steps={args.steps}", f"run.save_every={args.steps}",
            "run.progress=false", f"run.device={args.device}", f"run.output_dir={out}", "optim.schedule=constant"]
    launcher = ([sys.executable, "-m", "r1kit"] if procs == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m",
                 "r1kit"])
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(launcher + ["sft"] + [a for s in sets for a in ("--set", s)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # 1: warm-up
    tok_s = sum(r["tok_s"] for r in records) / len(records)
    return tok_s, records[-1]["loss"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-dense", help="preset or HF directory")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="global rows per optimizer step")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    results = {}
    for procs in (1, args.procs):
        tok_s, loss, wall = run(procs, args, root / f"p{procs}")
        results[procs] = tok_s
        print(f"sft {args.model} seq {args.seq_len} batch {args.batch_size} on {args.device}, {procs} process(es): "
              f"{tok_s:,.0f} tok/s (last loss {loss:.4f}, wall {wall:.1f}s incl. startup)")
    print(f"ratio {args.procs} processes / 1 process: {results[args.procs] / results[1]:.2f}x "
          f"(os.cpu_count() = {os.cpu_count()})")


if __name__ == "__main__":
    main()
