"""The GSM8K recipe's RL stage run by TRL's GRPOTrainer, for the side-by-side with r1kit's (issue: R1 on GSM8K).

Same starting model (the recipe's cold start), same question pool (GSM8K train, asked with the recipe's prompt
template through the model's chat template), same reward (r1kit's `accuracy` + 0.2 x `format`, which read only
the committed answer), same step shape and hyperparameters as `recipes/r1_smollm2_gsm8k.yaml`'s `r1_rl`: 4
questions x 8 samples, 256 new tokens, temperature 0.7, beta 0.001, lr 5e-6 constant after 3 warmup steps,
clip 0.2, per-sequence ("grpo") loss, bf16 autocast, 40 steps. The questions are drawn by each trainer's own
sampler, so the two see different questions from the same pool. Then the trained model is evaluated with
`r1kit eval` exactly as the pipeline evaluates its stages (first 500 test problems, k=4, T=0.6, top-p 0.95, and
greedy), and the numbers are printed next to r1kit's from the pipeline's directory.

    .venv/bin/python benchmarks/gsm8k_trl_rl.py --pipeline runs/r1-smollm2-gsm8k --data-dir ../shared/data
    .venv/bin/python benchmarks/gsm8k_trl_rl.py --pipeline ... --steps 1 --questions-per-step 1 \\
        --max-new-tokens 16 --eval-problems 2      # a plumbing check (minutes)

Needs `trl` (with the test extras: `pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "src/r1kit/recipes/r1_smollm2_gsm8k.yaml"


def train_trl(model_dir: Path, questions: list[dict], prompt_template: str, out: Path, args) -> float:
    """GRPO with TRL from `model_dir` into `out/final`; returns the wall time of `trainer.train()` in seconds."""
    import torch
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.rewards import get_reward

    accuracy, fmt = get_reward("accuracy"), get_reward("format")

    def text_of(completion) -> str:
        return completion[0]["content"] if isinstance(completion, list) else completion

    def reward(completions, answer, **_):  # r1kit's rewards on the reply text (the template prefills nothing)
        return [(accuracy(text_of(c), answer=a) or 0.0) + 0.2 * fmt(text_of(c)) for c, a in zip(completions, answer)]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": prompt_template.replace("{question}", q["question"])}],
                               "answer": q["answer"]} for q in questions])
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    completions = args.questions_per_step * args.num_generations
    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=min(16, completions),
        gradient_accumulation_steps=max(1, completions // 16), num_generations=args.num_generations,
        max_completion_length=args.max_new_tokens, temperature=0.7, top_p=1.0, beta=0.001, epsilon=0.2,
        loss_type="grpo", scale_rewards="group", learning_rate=5e-6, lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(3, args.steps), max_grad_norm=1.0, max_steps=args.steps, bf16=True, use_cpu=True,
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


def evaluate(model: Path, test_file: Path, out: Path, args, greedy: bool) -> dict:
    """`r1kit eval` with the pipeline's settings; returns its summary."""
    r1kit = Path(sys.executable).parent / "r1kit"
    sampling = ["--samples", "1", "--temperature", "0"] if greedy else [
        "--samples", str(args.eval_samples), "--temperature", "0.6", "--top-p", "0.95"]
    subprocess.run([str(r1kit), "eval", "--model", str(model), "--benchmark", "gsm8k", "--data", str(test_file),
                    "--limit", str(args.eval_problems), "--max-new-tokens", "256", "--batch-size", "128",
                    "--bf16-matmuls", "--no-progress", "--out", str(out), *sampling], check=True)
    return json.loads((out / "summary.json").read_text())


def pipeline_figures(pipeline: Path) -> dict:
    """r1kit's r1_rl stage from a pipeline directory: wall time and the evaluation summaries, where present."""
    timings = pipeline / "timings.json"
    figures = {"seconds": json.loads(timings.read_text()).get("r1_rl") if timings.exists() else None}
    for name in ("sampled", "greedy"):
        for summary in sorted((pipeline / "eval" / "r1_rl").rglob("summary.json")):
            data = json.loads(summary.read_text())
            if (data["settings"]["temperature"] == 0) == (name == "greedy"):
                figures[name] = data
    return figures


def main() -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="the recipe's output directory (holds cold_start/final)")
    p.add_argument("--data-dir", required=True, help="the folder holding gsm8k/train.jsonl and gsm8k/test.jsonl")
    p.add_argument("--out", default=None, help="default: <pipeline>/trl_rl")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--questions-per-step", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--eval-problems", type=int, default=500)
    p.add_argument("--eval-samples", type=int, default=4)
    args = p.parse_args()

    from r1kit.data.gsm8k import check_disjoint, load_gsm8k

    pipeline, data_dir = Path(args.pipeline), Path(args.data_dir)
    out = Path(args.out or pipeline / "trl_rl")
    cold_start = pipeline / "cold_start" / "final"
    for path in (cold_start, data_dir / "gsm8k/train.jsonl", data_dir / "gsm8k/test.jsonl"):
        if not path.exists():
            p.error(f"{path} does not exist")
    prompt_template = yaml.safe_load(RECIPE.read_text())["tasks"]["prompt_template"]
    train, test = load_gsm8k(str(data_dir / "gsm8k/train.jsonl")), load_gsm8k(str(data_dir / "gsm8k/test.jsonl"))
    check_disjoint([q["question"] for q in train], [q["question"] for q in test[: args.eval_problems]])

    if not (out / "final" / "config.json").exists():
        seconds = train_trl(cold_start, train, prompt_template, out, args)
        (out / "seconds.json").write_text(json.dumps({"train_s": seconds}))
    seconds = json.loads((out / "seconds.json").read_text())["train_s"]
    trl = {"seconds": seconds,
           "sampled": evaluate(out / "final", data_dir / "gsm8k/test.jsonl", out / "eval_sampled", args, False),
           "greedy": evaluate(out / "final", data_dir / "gsm8k/test.jsonl", out / "eval_greedy", args, True)}
    ours = pipeline_figures(pipeline)

    def row(name: str, fig: dict) -> str:
        sampled, greedy = fig.get("sampled"), fig.get("greedy")
        cells = [f"{fig['seconds']:.0f} s" if fig.get("seconds") else "-",
                 f"{100 * sampled['pass@1']:.1f} ± {100 * sampled['pass@1_stderr']:.1f}" if sampled else "-",
                 f"{100 * greedy['pass@1']:.1f}" if greedy else "-"]
        return f"| {name} | " + " | ".join(cells) + " |"

    print(f"GSM8K RL stage, {args.steps} steps of {args.questions_per_step} x {args.num_generations}, "
          f"{args.max_new_tokens} new tokens; evaluation on the first {args.eval_problems} test problems")
    print("| trainer | RL wall time | pass@1 (k=4, %) | greedy (%) |\n|---|---|---|---|")
    print(row("r1kit (pipeline's r1_rl)", ours))
    print(row("TRL GRPOTrainer", trl))
    if ours.get("seconds"):
        print(f"ratio wall time: TRL / r1kit = {trl['seconds'] / ours['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
