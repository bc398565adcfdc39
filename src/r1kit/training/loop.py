"""Pieces every training recipe shares: run/optimizer config, model loading, checkpoint save/resume, export.

A recipe (pretrain/SFT, GRPO) reads top to bottom: `start_run` (config written, model + tokenizer loaded,
optimizer and schedule built, last checkpoint restored), the loop, `save_step` every N steps, `finish_run`
(final HF export + plots). Checkpoints hold the HF-format model, optimizer, scheduler and RNG state; the
data order of every recipe is a pure function of (seed, step), so nothing else is needed to resume exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from r1kit.config import configclass


@configclass
class OptimConfig:
    lr: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 0.0
    warmup_steps: NonNegativeInt = 0
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: NonNegativeFloat = 0.1
    max_grad_norm: PositiveFloat = 1.0


@configclass
class RunConfig:
    output_dir: str = "runs/run"
    steps: PositiveInt = 100
    seed: int = 0
    save_every: PositiveInt = 50
    keep_last: PositiveInt = 2
    # autocast for the forward/backward; master weights stay fp32
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False
    progress: bool = True
    # MoE: apply the auxiliary-loss-free router-bias update after each step. None = the recipe's default:
    # on for pretraining, off (load only logged) for SFT and GRPO, as DeepSeek-V3 freezes the bias (gamma = 0)
    # at the end of pretraining.
    router_bias_update: bool | None = None


@dataclass
class Run:
    dir: Path
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    start_step: int  # last completed step (0 for a fresh run)


def autocast(run: RunConfig):
    if run.dtype == "bfloat16":
        return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_weights_into(model: torch.nn.Module, directory: Path) -> None:
    from r1kit.models.checkpoint import load_model

    model.load_state_dict(load_model(directory).state_dict())


def start_run(config, run: RunConfig, optim: OptimConfig, model_source: str, tokenizer_source: str | None) -> Run:
    """Write the resolved config, load model and tokenizer, build optimizer/schedule, resume if possible."""
    from r1kit.models.checkpoint import load_model
    from r1kit.tokenizer import load_tokenizer
    from r1kit.training.checkpointing import RunDir, load_checkpoint
    from r1kit.training.optim import build_optimizer, build_scheduler

    run_dir = RunDir(Path(run.output_dir))
    run_dir.path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(run.seed)
    tokenizer = load_tokenizer(tokenizer_source or model_source)
    model = load_model(model_source, seed=run.seed)
    model.train()
    if run.gradient_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = build_optimizer(model, optim.lr, optim.weight_decay)
    scheduler = build_scheduler(optimizer, optim.warmup_steps, run.steps, optim.schedule, optim.min_lr_ratio)
    start = 0
    latest = run_dir.latest_checkpoint()
    if latest is not None:
        ckpt = load_checkpoint(latest, load_model_fn=lambda d: load_weights_into(model, d), optimizer=optimizer,
                               scheduler=scheduler)
        start = ckpt.step
    run_dir.prepare_resume(start)
    run_dir.write_config(dataclasses.asdict(config))
    return Run(run_dir.path, model, tokenizer, optimizer, scheduler, start)


def save_step(r: Run, step: int, run: RunConfig) -> None:
    from r1kit.models.checkpoint import save_model
    from r1kit.training.checkpointing import save_checkpoint

    save_checkpoint(r.dir, step, save_model_fn=lambda d: save_model(r.model, d), optimizer=r.optimizer,
                    scheduler=r.scheduler, keep_last=run.keep_last)


def finish_run(r: Run, plot_keys: list[str]) -> Path:
    """Export the final model (HF format, with tokenizer) to <run>/final and plot the metrics."""
    from r1kit.models.checkpoint import save_model
    from r1kit.training.metrics import read_metrics
    from r1kit.training.plots import plot_metrics

    final = save_model(r.model, r.dir / "final", tokenizer=r.tokenizer)
    records = read_metrics(r.dir)
    keys = [k for k in plot_keys if any(k in rec for rec in records)]
    if keys:
        plot_metrics(records, keys, r.dir / "metrics.png")
    return final


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        forward = block.forward
        block.forward = lambda x, ctx, _f=forward: checkpoint(_f, x, ctx, use_reentrant=False)
