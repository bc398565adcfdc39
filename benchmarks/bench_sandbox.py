"""Throughput of the code sandbox: trivial programs per second with full isolation vs a plain subprocess.

    .venv/bin/python benchmarks/bench_sandbox.py [--n 200] [--workers 4]

Both sides run the same trivial stdin/stdout program through a thread pool of the same size; the plain side
is `python -c` in a subprocess with no isolation at all (the floor). Prints one `ratio` line.
"""

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from r1kit.rewards import run_tests_batch, sandbox_info

PROGRAM = "print(int(input()) + 1)"


def plain(i: int) -> bool:
    out = subprocess.run([sys.executable, "-I", "-S", "-c", PROGRAM], input=f"{i}\n", capture_output=True,
                         text=True, timeout=10, check=False)
    return out.stdout.strip() == str(i + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="programs per side")
    ap.add_argument("--workers", type=int, default=4, help="concurrent runs")
    args = ap.parse_args()
    print("isolation:", sandbox_info()["isolation"])
    items = [{"code": PROGRAM, "tests": [{"input": f"{i}\n", "output": str(i + 1)}]} for i in range(args.n)]
    run_tests_batch(items[:8], workers=args.workers)  # warm up
    t = time.perf_counter()
    ok = sum(r.all_passed for r in run_tests_batch(items, workers=args.workers))
    sandboxed = args.n / (time.perf_counter() - t)
    assert ok == args.n, f"only {ok}/{args.n} passed"
    with ThreadPoolExecutor(args.workers) as pool:
        t = time.perf_counter()
        assert all(pool.map(plain, range(args.n)))
        baseline = args.n / (time.perf_counter() - t)
    print(f"sandbox: {sandboxed:.1f} programs/s  plain subprocess: {baseline:.1f} programs/s  "
          f"(n={args.n}, workers={args.workers})")
    print(f"ratio sandbox/plain throughput: {sandboxed / baseline:.2f}")


if __name__ == "__main__":
    main()
