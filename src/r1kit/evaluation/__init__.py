"""Evaluation under the DeepSeek-R1 protocol: benchmark registry, pass@k / cons@k metrics, harness, report.

    from r1kit.evaluation import evaluate
    summary = evaluate(model, tokenizer, "math500", data="test.jsonl", samples=4, out_dir="runs/eval/math500")

Modules: `benchmarks` (registry, user specs, templates), `layouts` (public file layouts -> problems),
`grading` (answers checked through `r1kit.rewards`), `metrics` (pure scoring), `harness` (`evaluate`:
batching, seeding, cache/resume), `report` (summary.json, report.md with the R1 paper's numbers, plot),
`cli` (`r1kit eval`).
"""

from r1kit.evaluation.benchmarks import Benchmark, get_benchmark, list_benchmarks, load_problems, load_spec
from r1kit.evaluation.harness import EvalConfig, evaluate, sample_seed
from r1kit.evaluation.layouts import Problem
from r1kit.evaluation.metrics import cons_at_k, majority_vote, pass_at_k

__all__ = [
    "Benchmark",
    "EvalConfig",
    "Problem",
    "cons_at_k",
    "evaluate",
    "get_benchmark",
    "list_benchmarks",
    "load_problems",
    "load_spec",
    "majority_vote",
    "pass_at_k",
    "sample_seed",
]
