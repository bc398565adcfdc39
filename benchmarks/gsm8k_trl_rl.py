"""The GSM8K recipe's RL stage run by TRL's GRPOTrainer, for the side-by-side with r1kit's (issue: R1 on GSM8K).

Same starting model (the recipe's cold start), same question pool (GSM8K train, asked with the recipe's prompt
template through the model's chat template), same reward (r1kit's `accuracy` + 0.2 x `format`, which read only
the committed answer), same step shape and hyperparameters, read from `recipes/r1_smollm2_gsm8k.yaml`'s `r1_rl`
(today the questions whose worked solution has at most 2 steps, 4 questions x 16 samples, 256 new tokens,
temperature 0.7, beta 0.001, lr 1e-5 constant after 3 warmup steps, bf16 autocast, 50 steps; clip 0.2 and the
per-sequence "grpo" loss, r1kit's defaults). The questions are drawn by each trainer's own sampler, so the two
see different questions from the same pool. Wall time is reported whole and as the median step (TRL's
`step_time` in its log; r1kit's from the stage's metrics.jsonl), which a few steps slowed by other work on a
shared machine do not move. Then the trained
model is evaluated with `r1kit eval` with the recipe's `evaluate` settings, as the pipeline evaluates its stages
(today the first 500 test problems, k=4, T=0.6, top-p 0.95, and greedy), and the numbers are printed next to
r1kit's from the pipeline's directory.

    .venv/bin/python benchmarks/gsm8k_trl_rl.py --pipeline runs/r1-smollm2-gsm8k --data-dir ../shared/data
    .venv/bin/python benchmarks/gsm8k_trl_rl.py --pipeline ... --steps 1 --questions-per-step 1 \\
        --num-generations 2 --max-new-tokens 16 --eval-problems 2      # a plumbing check (minutes)
    .venv/bin/python benchmarks/gsm8k_trl_rl.py --pipeline ... --steps 5 --train-only --out /tmp/trl5  # s per step

Needs `trl` (with the test extras: `pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "src/r1kit/recipes/r1_smollm2_gsm8k.yaml"


def train_trl(model_dir: Path, questions: list[dict], recipe: dict, out: Path, args) -> float:
    """GRPO with TRL from `model_dir` into `out/final`, with the recipe's r1_rl settings (step shape from `args`);
    returns the wall time of `trainer.train()` in seconds."""
    import torch
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.rewards import get_reward

    rl = recipe["stages"]["r1_rl"]["config"]
    weights = rl["rewards"]  # {"accuracy": 1.0, "format": 0.2}
    rewards = {name: get_reward(name) for name in weights}

    def reward(completions, answer, **_):  # r1kit's rewards on the reply text (the template prefills nothing)
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [sum(w * (rewards[n](t, answer=a) or 0.0) for n, w in weights.items()) for t, a in zip(texts, answer)]

    template = recipe["tasks"]["prompt_template"]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": template.replace("{question}", q["question"])}],
                               "answer": q["answer"]} for q in questions])
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    completions = args.questions_per_step * args.num_generations
    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=min(16, completions),
        gradient_accumulation_steps=max(1, completions // 16), num_generations=args.num_generations,
        max_completion_length=args.max_new_tokens, temperature=rl["temperature"], top_p=1.0,
        beta=rl["loss"]["beta"], epsilon=0.2, loss_type=rl["loss"].get("loss_type", "grpo"), scale_rewards="group",
        learning_rate=rl["optim"]["lr"], lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(rl["optim"]["warmup_steps"], args.steps), max_grad_norm=rl["optim"]["max_grad_norm"],
        max_steps=args.steps, bf16=rl["run"]["dtype"] == "bfloat16", use_cpu=True,
        logging_steps=1, save_strategy="no", report_to=[], seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out / "final"))
    tokenizer.save_pretrained(str(out / "final"))
    (out / "trl_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return seconds


def evaluate(model: Path, test_file: Path, out: Path, recipe: dict, args, greedy: bool) -> dict:
    """`r1kit eval` with the recipe's `evaluate` settings (as the pipeline runs it); returns its summary."""
    ev = recipe["evaluate"]
    r1kit = Path(sys.executable).parent / "r1kit"
    sampling = ["--samples", "1", "--temperature", "0"] if greedy else [
        "--samples", str(ev["samples"]), "--temperature", str(ev["temperature"]), "--top-p", str(ev["top_p"])]
    bf16 = ["--bf16-matmuls"] if ev.get("matmul_dtype") == "bfloat16" else []
    subprocess.run([str(r1kit), "eval", "--model", str(model), "--benchmark", ev["benchmark"], "--data",
                    str(test_file), "--limit", str(args.eval_problems), "--max-new-tokens", str(ev["max_new_tokens"]),
                    "--batch-size", str(ev["batch_size"]), *bf16, "--no-progress", "--out", str(out), *sampling],
                   check=True)
    return json.loads((out / "summary.json").read_text())


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def trl_step_median(out: Path) -> float | None:
    """The median of TRL's per-step `step_time` (its log, written by `train_trl`)."""
    log = out / "trl_log.json"
    steps = json.loads(log.read_text()) if log.exists() else []
    return median([float(e["step_time"]) for e in steps if "step_time" in e])


def pipeline_figures(pipeline: Path) -> dict:
    """r1kit's r1_rl stage from a pipeline directory: wall time, median step time and the evaluation summaries,
    where present."""
    timings = pipeline / "timings.json"
    figures = {"seconds": json.loads(timings.read_text()).get("r1_rl") if timings.exists() else None}
    metrics = pipeline / "r1_rl" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    figures["median_step"] = median([r["step_s"] for r in rows if "step_s" in r])
    for summary in sorted((pipeline / "eval" / "r1_rl").rglob("summary.json")):
        data = json.loads(summary.read_text())
        figures["greedy" if data["settings"]["temperature"] == 0 else "sampled"] = data
    return figures


def main() -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="the recipe's output directory (holds cold_start/final)")
    p.add_argument("--data-dir", required=True, help="the folder holding gsm8k/train.jsonl and gsm8k/test.jsonl")
    p.add_argument("--out", default=None, help="default: <pipeline>/trl_rl")
    # the step shape and evaluation size default to the recipe's (smaller values: a plumbing check)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--questions-per-step", type=int, default=None)
    p.add_argument("--num-generations", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--eval-problems", type=int, default=None)
    p.add_argument("--train-only", action="store_true",
                   help="time the training steps and stop (no evaluation): a wall-time comparison on a few steps")
    args = p.parse_args()
    recipe = yaml.safe_load(RECIPE.read_text())
    rl = recipe["stages"]["r1_rl"]["config"]
    for name, value in (("steps", rl["run"]["steps"]), ("questions_per_step", rl["questions_per_step"]),
                        ("num_generations", rl["num_generations"]), ("max_new_tokens", rl["max_new_tokens"]),
                        ("eval_problems", recipe["evaluate"]["problems"])):
        if getattr(args, name) is None:
            setattr(args, name, value)

    from r1kit.data.gsm8k import check_disjoint, load_gsm8k

    pipeline, data_dir = Path(args.pipeline), Path(args.data_dir)
    out = Path(args.out or pipeline / "trl_rl")
    cold_start = pipeline / "cold_start" / "final"
    for path in (cold_start, data_dir / "gsm8k/train.jsonl", data_dir / "gsm8k/test.jsonl"):
        if not path.exists():
            p.error(f"{path} does not exist")
    train, test = load_gsm8k(str(data_dir / "gsm8k/train.jsonl")), load_gsm8k(str(data_dir / "gsm8k/test.jsonl"))
    max_solution_steps = rl.get("data", {}).get("max_solution_steps")
    if max_solution_steps:  # the recipe's curriculum: the same question pool as r1kit's stage
        from r1kit.training.tasks import solution_steps

        train = [q for q in train if solution_steps(q) <= max_solution_steps]
    check_disjoint([q["question"] for q in train], [q["question"] for q in test[: args.eval_problems]])

    if not (out / "final" / "config.json").exists():
        seconds = train_trl(cold_start, train, recipe, out, args)
        (out / "seconds.json").write_text(json.dumps({"train_s": seconds}))
    seconds = json.loads((out / "seconds.json").read_text())["train_s"]
    if args.train_only:
        ours = pipeline_figures(pipeline)
        print(f"TRL GRPOTrainer: {args.steps} steps of {args.questions_per_step} x {args.num_generations} in "
              f"{seconds:.0f} s ({seconds / args.steps:.1f} s per step); log in {out / 'trl_log.json'}")
        if ours.get("seconds"):
            steps = recipe["stages"]["r1_rl"]["config"]["run"]["steps"]
            print(f"r1kit r1_rl: {steps} steps in {ours['seconds']:.0f} s ({ours['seconds'] / steps:.1f} s per step)")
        return 0
    trl = {"seconds": seconds, "median_step": trl_step_median(out),
           "sampled": evaluate(out / "final", data_dir / "gsm8k/test.jsonl", out / "eval_sampled", recipe, args,
                               greedy=False),
           "greedy": evaluate(out / "final", data_dir / "gsm8k/test.jsonl", out / "eval_greedy", recipe, args,
                              greedy=True)}
    ours = pipeline_figures(pipeline)

    def row(name: str, fig: dict) -> str:
        sampled, greedy = fig.get("sampled"), fig.get("greedy")
        cells = [f"{fig['seconds']:.0f} s" if fig.get("seconds") else "-",
                 f"{fig['median_step']:.1f} s" if fig.get("median_step") else "-",
                 f"{100 * sampled['pass@1']:.1f} ± {100 * sampled['pass@1_stderr']:.1f}" if sampled else "-",
                 f"{100 * greedy['pass@1']:.1f}" if greedy else "-"]
        return f"| {name} | " + " | ".join(cells) + " |"

    print(f"GSM8K RL stage, {args.steps} steps of {args.questions_per_step} x {args.num_generations}, "
          f"{args.max_new_tokens} new tokens; evaluation on the first {args.eval_problems} test problems")
    print(f"| trainer | RL wall time | median step | pass@1 (k={recipe['evaluate']['samples']}, %) | greedy (%) |\n"
          "|---|---|---|---|---|")
    print(row("r1kit (pipeline's r1_rl)", ours))
    print(row("TRL GRPOTrainer", trl))
    if ours.get("seconds"):
        print(f"ratio wall time: TRL / r1kit = {trl['seconds'] / ours['seconds']:.2f}x")
    if ours.get("median_step") and trl.get("median_step"):
        print(f"ratio median step: TRL / r1kit = {trl['median_step'] / ours['median_step']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
