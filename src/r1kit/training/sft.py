"""Supervised fine-tuning: `r1kit sft --config sft.yaml`, the cold start and the rejection-sampled SFT of R1.

Chat rows (a dataset, or without one the synthetic tasks' worked solutions rendered R1-style) with the loss on
the final assistant turn only, through the shared loop (`fit`): sequence packing, MTP loss, token-weighted
gradient accumulation. The MoE router bias stays frozen, as DeepSeek-V3 freezes it after pretraining, unless
run.router_bias_update asks. Re-running the same command resumes from the last checkpoint in run.output_dir.

Left out: multi-turn targets (only the last assistant turn is trained).
"""

from __future__ import annotations

from dataclasses import field

from pydantic import NonNegativeInt, PositiveInt

from r1kit.config import configclass
from r1kit.training.evaluator import Evaluator
from r1kit.training.fit import BatchConfig, fit
from r1kit.training.lm_data import ChatData, chat_samples
from r1kit.training.loop import OptimConfig, RunConfig, start_run
from r1kit.training.tasks import TaskData


@configclass
class SFTConfig:
    model: str = "toy-moe"
    tokenizer: str | None = None
    data: ChatData = field(default_factory=ChatData)
    tasks: TaskData = field(default_factory=TaskData)  # cold-start questions and held-out evaluation
    batch: BatchConfig = field(default_factory=BatchConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/sft"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=10, schedule="cosine"))
    eval_every: NonNegativeInt = 0  # greedy held-out accuracy on tasks' test split every N steps; 0 = off
    eval_size: PositiveInt = 100
    max_new_tokens: PositiveInt = 128


def sft(cfg: SFTConfig) -> dict:
    run = start_run(cfg, cfg.run, cfg.optim, cfg.model, cfg.tokenizer)
    samples = chat_samples(cfg.data, cfg.tasks, run.tokenizer, cfg.run.seed)
    evaluate = (Evaluator.build(run.tokenizer, cfg.tasks, cfg.eval_size, cfg.max_new_tokens, cfg.eval_every,
                                cfg.run.seed) if cfg.eval_every else None)
    return fit(run, samples, cfg.batch, cfg.run, cfg.optim, desc="sft", evaluate=evaluate,
               bias_update=bool(cfg.run.router_bias_update))  # frozen after pretraining unless asked


__all__ = ["SFTConfig", "sft"]
