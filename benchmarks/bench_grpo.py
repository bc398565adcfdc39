"""GRPO seconds per step: r1kit vs TRL's GRPOTrainer on SmolLM2-135M-Instruct, same settings, one run.

Settings shared by both (the issue's): 2 questions x G=8 completions per step, max 128 new tokens,
temperature 0.7, beta 0.04 (so both keep a reference model), lr 1e-6, fp32 on the CPU, the same prompts
(two-digit additions asked plainly) and the same reward (`last_number`: the last number of the reply equals
the sum). Prints each system's seconds per step (median over the timed steps), completion tokens per second of
step time (the fair measure when the two sample replies of different lengths), its mean reward, and the ratios;
also r1kit with `rollout_dtype: bfloat16` (bf16 matmuls while sampling, fp32 trainer, tis_cap 2), and with
`--bf16` both trainers in bf16 autocast (r1kit: `run.dtype: bfloat16` + bf16 rollouts; TRL: `bf16=True`).

    .venv/bin/python benchmarks/bench_grpo.py [--steps 3] [--skip-trl] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "{question} Answer with just the number."  # the question is "What is 23+58?"


def questions(n: int, seed: int) -> list[dict]:
    from r1kit.data import make_task_set

    return make_task_set("addition", n, seed=seed, level=2, split="train")


def export_smollm2(directory: Path) -> Path:
    """One HF checkpoint both trainers load (transformers refuses to train its GGUF-quantized load)."""
    import r1kit

    r1kit.save_model(r1kit.load_model("smollm2-135m"), directory, tokenizer=r1kit.load_tokenizer("smollm2-135m"))
    return directory


def run_r1kit(model_dir: Path, steps: int, out: Path, loss: dict | None = None, dtype: str = "float32",
              **extra) -> tuple[list[float], list[float], list[float]]:
    from r1kit.config import load_config
    from r1kit.training.grpo import GRPOConfig, train
    from r1kit.training.metrics import read_metrics

    cfg = load_config(GRPOConfig, overrides={
        "model": str(model_dir), "questions_per_step": 2, "num_generations": 8, "max_new_tokens": 128,
        "temperature": 0.7, "loss": {"beta": 0.04, **(loss or {})}, "rewards": {"last_number": 1.0},
        "micro_batch_size": 16,
        "data": {"tasks": ["addition"], "level": 2, "num_train": 200,
                 "prompt_template": PROMPT},
        "optim": {"lr": 1e-6}, "run": {"output_dir": str(out), "steps": steps, "save_every": 10_000, "dtype": dtype},
        **extra,
    })
    train(cfg)
    records = [r for r in read_metrics(out) if "step_s" in r]
    return ([r["step_s"] for r in records], [r["reward"] for r in records],
            [16 * r["completion_len"] for r in records])


def run_trl(model_dir: Path, steps: int, out: Path, bf16: bool = False) -> tuple[list[float], list[float], list[float]]:
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.rewards import get_reward

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    rows = questions(200, seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": PROMPT.format(**r)}], "answer": r["answer"]}
                              for r in rows])
    last_number = get_reward("last_number")

    def reward(completions, answer, **_):
        return [last_number(c[0]["content"] if isinstance(c, list) else c, answer=a)
                for c, a in zip(completions, answer)]

    times, rewards, tokens = [], [], []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                rewards.append(logs["reward"])
                tokens.append(16 * logs["completions/mean_length"])

    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=16, num_generations=8,
                      max_completion_length=128, temperature=0.7, beta=0.04, learning_rate=1e-6, max_steps=steps,
                      logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=bf16,
                      gradient_accumulation_steps=1, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    return times, rewards, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also both trainers in bf16 autocast")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as d:
        model_dir = export_smollm2(Path(d) / "smollm2")
        results["r1kit"] = run_r1kit(model_dir, args.steps, Path(d) / "r1kit")
        # r1kit's fastest CPU setting: rollouts with bf16 matmuls, the trainer in fp32, TIS for the difference
        results["r1kit-bf16-rollouts"] = run_r1kit(model_dir, args.steps, Path(d) / "r1kit-bf16",
                                                   rollout_dtype="bfloat16", loss={"tis_cap": 2.0})
        if not args.skip_trl:
            results["trl"] = run_trl(model_dir, args.steps, Path(d) / "trl")
        if args.bf16:
            results["r1kit-bf16"] = run_r1kit(model_dir, args.steps, Path(d) / "r1kit-bf16-all", dtype="bfloat16",
                                              rollout_dtype="bfloat16", loss={"tis_cap": 2.0})
            if not args.skip_trl:
                results["trl-bf16"] = run_trl(model_dir, args.steps, Path(d) / "trl-bf16", bf16=True)
    print(f"GRPO on SmolLM2-135M: 2 questions x G=8, 128 new tokens, beta 0.04, fp32, {torch.get_num_threads()} "
          f"threads, {args.steps} steps")
    med, tok_s = {}, {}
    for name, (times, rewards, tokens) in results.items():
        med[name] = statistics.median(times)
        tok_s[name] = sum(tokens) / sum(times)  # completion tokens per second of step time, over every step
        print(f"{name:>20}: {med[name]:.1f} s/step (steps: {', '.join(f'{t:.1f}' for t in times)}), "
              f"{tok_s[name]:.1f} completion tok/s, mean reward {sum(rewards) / max(len(rewards), 1):.3f}")
    for peer, ours in (("trl", "r1kit"), ("trl", "r1kit-bf16-rollouts"), ("trl-bf16", "r1kit-bf16")):
        if peer in med and ours in med:
            print(f"{ours} / {peer}: {tok_s[ours] / tok_s[peer]:.2f}x completion tokens per second of step time "
                  f"({med[peer] / med[ours]:.2f}x in median seconds per step)")
    print(json.dumps({k: {"s_per_step": med[k], "completion_tok_s": tok_s[k]} for k in med}))


if __name__ == "__main__":
    main()
