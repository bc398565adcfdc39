"""GRPO against PPO on the same policy: peak memory, seconds per step and the reward curve, one run.

The seed says GRPO "cuts both memory usage and training complexity roughly in half" by dropping PPO's critic.
This measures it. For each model (SmolLM2-135M-Instruct, the toy MoE) both recipes get the same questions,
batch (questions x G), completion length, sampling, rewards, learning rate and loss (`loss:`, beta > 0 so both
keep a frozen reference); PPO adds its critic (a value model initialized from the policy, its own AdamW,
GAE, value clipping). Each (model, recipe) runs in a fresh subprocess, so its peak memory is its own: on the
CPU the peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), on CUDA
`torch.cuda.max_memory_allocated`. The baseline is the process's RSS after importing torch and r1kit; the
"model state" is what the parameter counts predict for fp32 AdamW training (weights, gradients, two moments),
plus the reference's weights. Checkpoint saving and the final export are switched off in the workers: the
measurement is rollouts plus updates.

    .venv/bin/python benchmarks/bench_grpo_vs_ppo.py [--models smollm2,toy-moe] [--smollm2-steps 3]
        [--toy-steps 20] [--out docs/img/grpo_vs_ppo.png]

Prints a table, `ratio` lines (PPO / GRPO) and a JSON line; saves the plot to --out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "{question} Answer with just the number."  # SmolLM2: "What is 23+58? Answer with just the number."

# Per model: the shared settings of both recipes (GRPOConfig fields; PPO adds value_optim below).
SETTINGS = {
    "smollm2": {"questions_per_step": 2, "num_generations": 4, "max_new_tokens": 64, "temperature": 0.7,
                "rewards": {"last_number": 1.0}, "loss": {"beta": 0.04}, "optim": {"lr": 1e-6},
                "micro_batch_size": 8,
                "data": {"tasks": ["addition"], "level": 2, "num_train": 200, "prompt_template": PROMPT}},
    "toy-moe": {"model": "toy-moe", "questions_per_step": 2, "num_generations": 8, "max_new_tokens": 12,
                "rewards": {"sevens": 1.0}, "loss": {"beta": 0.04}, "optim": {"lr": 3e-3},
                "micro_batch_size": 16, "data": {"tasks": ["addition"], "level": 2, "num_train": 64}},
}
VALUE_LR = {"smollm2": 1e-5, "toy-moe": 3e-3}
BYTES = 4  # fp32 master weights


def sevens(completion: str, **_) -> float:
    """The toy's reachable reward (as in the GRPO/PPO tests): the share of '7' characters in the reply."""
    return completion.count("7") / max(len(completion), 1)


# ---- the worker: one recipe, one model, in its own process -----------------------------------------------

def worker(spec: dict) -> dict:
    import torch

    from r1kit.config import load_config
    from r1kit.rewards import REWARDS
    from r1kit.training import grpo, loop, ppo
    from r1kit.training.metrics import read_metrics

    REWARDS["sevens"] = sevens  # a fresh process: the registry is this run's own
    cuda = torch.cuda.is_available()
    for module in ("r1kit.generation", "r1kit.models.checkpoint", "r1kit.tokenizer", "r1kit.training.tasks",
                   "r1kit.training.value", "r1kit.training.evaluator", "r1kit.training.plots"):
        importlib.import_module(module)  # the libraries the recipes import lazily count in the baseline
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {}

    def finish(run, _keys):  # record the peak of rollouts + updates, skip the export
        peak["rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if cuda:
            peak["cuda"] = torch.cuda.max_memory_allocated()

    loop.save_step = lambda *a, **k: None
    loop.finish_run = finish
    ppo.save_critic = lambda *a, **k: None
    recipe = grpo if spec["recipe"] == "grpo" else ppo
    cfg = load_config(recipe.GRPOConfig if spec["recipe"] == "grpo" else ppo.PPOConfig, overrides=spec["config"])
    recipe.train(cfg)
    records = [r for r in read_metrics(cfg.run.output_dir) if "step_s" in r]
    return {"threads": torch.get_num_threads(), "cuda": cuda, "base_rss": base_kb * 1024, "peak_rss": peak["rss_kb"] * 1024, "peak_cuda": peak.get("cuda"),
            "step_s": [r["step_s"] for r in records], "reward": [r["reward"] for r in records],
            "value_loss": [r.get("value_loss") for r in records],
            "explained_variance": [r.get("explained_variance") for r in records]}


def subprocess_json(flag: str, spec) -> dict:
    """Run this script with `flag spec` in a fresh process; its last stdout line is the JSON result.

    The parent never loads a model: on Linux a child's ru_maxrss starts from its parent's RSS at fork (it
    survives exec), so a large parent would hide the children's own peaks."""
    out = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{flag} {spec} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_worker(recipe: str, config: dict) -> dict:
    return subprocess_json("--worker", {"recipe": recipe, "config": config})


# ---- expected memory from parameter counts -------------------------------------------------------------------

def parameter_counts(source: str) -> tuple[int, int]:
    """(policy, critic) parameters, tied weights counted once; the critic drops an untied head and the MTP
    modules and adds a dim -> 1 value head (`ValueModel`)."""
    import r1kit
    from r1kit.training.value import ValueModel

    policy = sum(p.numel() for p in r1kit.load_model(source).parameters())
    critic = sum(p.numel() for p in ValueModel(r1kit.load_model(source)).parameters())
    return policy, critic


def expected_bytes(recipe: str, policy: int, critic: int, with_ref: bool) -> int:
    """fp32 AdamW: weights + gradients + 2 moments = 16 bytes a trained parameter; 4 a frozen one."""
    trained = policy + (critic if recipe == "ppo" else 0)
    return 4 * BYTES * trained + (BYTES * policy if with_ref else 0)


# ---- the comparison ----------------------------------------------------------------------------------------

def compare(name: str, source: str, steps: int, work: Path) -> dict:
    base = {**SETTINGS[name], "model": source}
    results = {}
    for recipe in ("grpo", "ppo"):
        cfg = {**base, "run": {"output_dir": str(work / f"{name}-{recipe}"), "steps": steps, "save_every": 10**6,
                               "progress": False, "seed": 0}}
        if recipe == "ppo":
            cfg["value_optim"] = {"lr": VALUE_LR[name]}
        results[recipe] = run_worker(recipe, cfg)
        print(f"  {name} {recipe}: done", file=sys.stderr, flush=True)
    policy, critic = subprocess_json("--count", source)["counts"]
    for recipe, r in results.items():
        r["expected"] = expected_bytes(recipe, policy, critic, with_ref=base["loss"]["beta"] > 0)
    return {"policy_params": policy, "critic_params": critic, **results}


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def report(all_results: dict) -> None:
    first = next(iter(all_results.values()))["grpo"]
    where = "CUDA (peak allocated)" if first["cuda"] else f"CPU, {first['threads']} torch threads (peak RSS)"
    print(f"\nGRPO vs PPO, fp32, {where}; memory in GiB")
    head = (f"{'model':<9} {'recipe':<5} {'steps':>5} {'s/step':>7} {'peak RSS':>9} {'- base':>7} {'expected':>9} "
            f"{'reward first->last':>20}")
    print(head)
    print("-" * len(head))
    for name, res in all_results.items():
        for recipe in ("grpo", "ppo"):
            r = res[recipe]
            peak = r["peak_cuda"] if r["peak_cuda"] is not None else r["peak_rss"]
            print(f"{name:<9} {recipe:<5} {len(r['step_s']):>5} {statistics.median(r['step_s']):>7.2f} "
                  f"{gib(peak):>9} {gib(peak - (0 if r['peak_cuda'] else r['base_rss'])):>7} "
                  f"{gib(r['expected']):>9} {r['reward'][0]:>9.3f} -> {r['reward'][-1]:.3f}")
        print(f"{'':<9} parameters: policy {res['policy_params']:,}, critic {res['critic_params']:,}")
    for name, res in all_results.items():
        g, p = res["grpo"], res["ppo"]
        net = [(r["peak_cuda"] if r["peak_cuda"] is not None else r["peak_rss"] - r["base_rss"]) for r in (g, p)]
        print(f"ratio {name} ppo/grpo peak memory (above baseline): "
              f"{net[1] / net[0] if net[0] > 0 else float('nan'):.2f}")
        print(f"ratio {name} ppo/grpo peak memory (whole process): "
              f"{(p['peak_cuda'] or p['peak_rss']) / (g['peak_cuda'] or g['peak_rss']):.2f}")
        print(f"ratio {name} ppo/grpo expected model state: {p['expected'] / g['expected']:.2f}")
        print(f"ratio {name} ppo/grpo seconds per step: "
              f"{statistics.median(p['step_s']) / statistics.median(g['step_s']):.2f}")
        quarter = max(1, len(g["reward"]) // 4)
        for recipe, r in (("grpo", g), ("ppo", p)):
            print(f"{name} {recipe} reward, mean of the first/last {quarter} steps: "
                  f"{statistics.mean(r['reward'][:quarter]):.3f} -> {statistics.mean(r['reward'][-quarter:]):.3f}")


def plot(all_results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(all_results)
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.4 * rows), squeeze=False)
    colors = {"grpo": "tab:blue", "ppo": "tab:orange"}
    for row, (name, res) in zip(axes, all_results.items()):
        for recipe in ("grpo", "ppo"):
            r = res[recipe]
            row[0].plot(range(1, len(r["reward"]) + 1), r["reward"], marker="o", ms=3, label=recipe.upper(),
                        color=colors[recipe])
        row[0].set(title=f"{name}: mean reward per step", xlabel="step", ylabel="reward")
        row[0].legend()
        labels = ["GRPO", "PPO"]
        measured = [(res[k]["peak_cuda"] or res[k]["peak_rss"] - res[k]["base_rss"]) / 2**30 for k in ("grpo", "ppo")]
        expected = [res[k]["expected"] / 2**30 for k in ("grpo", "ppo")]
        x = range(2)
        row[1].bar([i - 0.2 for i in x], measured, 0.4, label="measured peak - baseline",
                   color=[colors["grpo"], colors["ppo"]])
        row[1].bar([i + 0.2 for i in x], expected, 0.4, label="expected model state", color="lightgray",
                   edgecolor="black")
        row[1].set_xticks(list(x), labels)
        row[1].set(title=f"{name}: peak memory (GiB)")
        row[1].legend(fontsize=8)
        secs = [statistics.median(res[k]["step_s"]) for k in ("grpo", "ppo")]
        row[2].bar(labels, secs, color=[colors["grpo"], colors["ppo"]])
        row[2].set(title=f"{name}: seconds per step (median)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def export_smollm2(directory: Path) -> Path:
    """One HF safetensors checkpoint both recipes load (so neither pays for the GGUF's dequantization)."""
    import r1kit

    return r1kit.save_model(r1kit.load_model("smollm2-135m"), directory,
                            tokenizer=r1kit.load_tokenizer("smollm2-135m"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,toy-moe", help="comma-separated: smollm2, toy-moe")
    ap.add_argument("--smollm2-steps", type=int, default=3, help="steps per recipe on SmolLM2-135M")
    ap.add_argument("--toy-steps", type=int, default=20, help="steps per recipe on the toy MoE")
    ap.add_argument("--out", type=Path, default=Path("docs/img/grpo_vs_ppo.png"), help="where to save the plot")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--count", help=argparse.SUPPRESS)
    ap.add_argument("--export", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.count:
        print(json.dumps({"counts": parameter_counts(json.loads(args.count))}))
        return
    if args.export:
        print(json.dumps({"path": str(export_smollm2(Path(json.loads(args.export))))}))
        return
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in SETTINGS]
    if unknown:
        ap.error(f"--models: unknown {unknown[0]!r} (known: {', '.join(SETTINGS)})")
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            if name == "smollm2":
                source, steps = subprocess_json("--export", str(Path(d) / "smollm2"))["path"], args.smollm2_steps
            else:
                source, steps = "toy-moe", args.toy_steps
            results[name] = compare(name, source, steps, Path(d))
    report(results)
    plot(results, args.out)
    print(json.dumps({name: {k: res[k] for k in ("policy_params", "critic_params")} |
                      {rec: {"peak_rss": res[rec]["peak_rss"], "base_rss": res[rec]["base_rss"],
                             "peak_cuda": res[rec]["peak_cuda"], "expected": res[rec]["expected"],
                             "s_per_step": statistics.median(res[rec]["step_s"]), "reward": res[rec]["reward"]}
                             for rec in ("grpo", "ppo")} for name, res in results.items()}))


if __name__ == "__main__":
    main()
