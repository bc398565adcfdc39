"""Pieces every training recipe shares: run/optimizer config, model placement, checkpoint save/resume, export.

A recipe (pretrain/SFT, GRPO) reads top to bottom: `start_run` (config written, model + tokenizer loaded onto
the run's device and sharded across processes under torchrun, optimizer and schedule built, last checkpoint
restored), the loop, `save_step` every N steps, `finish_run` (final HF export + plots). Checkpoints are
`torch.distributed.checkpoint` directories (sharded model and optimizer, scheduler, RNG; see checkpointing.py)
that resume at any number of processes; the data order of every recipe is a pure function of (seed, step), so
nothing else is needed to resume exactly.

Precision: `run.dtype: auto` is bf16 autocast on CUDA and fp32 on the CPU; master weights and optimizer state
stay fp32 either way. On CUDA, TF32 matmuls are on and AdamW is fused. Under torchrun with CUDA, FSDP2
all-gathers parameters in the autocast dtype and reduces gradients in fp32.

Left out: fp8 training, CPU offload, gradient scaling for fp16 (bf16 needs none).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from r1kit.config import configclass
from r1kit.training.distributed import Topology

DeviceSetting = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]


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
    # auto | cpu | cuda | cuda:N; auto = CUDA when present (under torchrun each process takes cuda:LOCAL_RANK)
    device: DeviceSetting = "auto"
    # autocast for the forward/backward; master weights stay fp32. auto = bfloat16 on CUDA, float32 on the CPU
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False
    progress: bool = True
    # MoE: apply the auxiliary-loss-free router-bias update after each step. None = the recipe's default:
    # on for pretraining, off (load only logged) for SFT and GRPO, as DeepSeek-V3 freezes the bias (gamma = 0)
    # at the end of pretraining.
    router_bias_update: bool | None = None
    # also send the metrics (rank 0) to these trackers when installed; offline unless their env says otherwise
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = dataclasses.field(default_factory=list)


@dataclass
class Run:
    dir: Path
    model: torch.nn.Module  # on `device`; FSDP2-sharded under torchrun
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    start_step: int  # last completed step (0 for a fresh run)
    topo: Topology = dataclasses.field(default_factory=Topology)
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # autocast dtype (None: fp32)

    def autocast(self):
        """Autocast on the device the model is on, in the run's precision."""
        return _autocast(self.device, self.amp_dtype)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a `run.dtype` setting means on `device` (None: no autocast)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if setting == "bfloat16" else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def autocast(run: RunConfig, device: torch.device | str = "cpu"):
    """Autocast for `run.dtype` on `device`, the device the model is on (not whichever one exists)."""
    device = torch.device(device)
    return _autocast(device, amp_dtype(run.dtype, device))


def load_weights_into(model: torch.nn.Module, directory: Path) -> None:
    from r1kit.models.checkpoint import load_model

    model.load_state_dict(load_model(directory).state_dict())


def place_model(model: torch.nn.Module, run: RunConfig, topo: Topology, device: torch.device) -> torch.nn.Module:
    """Move the model to its device, turn on activation checkpointing, shard it under torchrun."""
    from r1kit.training.distributed import shard_model

    model.to(device)
    model.train()
    if run.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if topo.distributed:
        shard_model(model, topo, param_dtype=amp_dtype(run.dtype, device) if device.type == "cuda" else None)
    return model


def start_run(config, run: RunConfig, optim: OptimConfig, model_source: str, tokenizer_source: str | None) -> Run:
    """Write the resolved config, load model and tokenizer, build optimizer/schedule, resume if possible."""
    from r1kit.device import configure_device, resolve_device
    from r1kit.errors import ConfigError
    from r1kit.models.checkpoint import load_model
    from r1kit.tokenizer import load_tokenizer
    from r1kit.training.checkpointing import RunDir
    from r1kit.training.distributed import barrier, topology
    from r1kit.training.optim import build_optimizer, build_scheduler

    topo = topology()
    if topo.distributed and ":" in run.device:
        raise ConfigError(f"run.device: {run.device!r} names one GPU, but torchrun gives each process its own "
                          "(cuda:LOCAL_RANK); use auto or cuda")
    device = resolve_device(run.device, topo.local_rank)
    configure_device(device)
    run_dir = RunDir(Path(run.output_dir))
    run_dir.path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(run.seed)
    tokenizer = load_tokenizer(tokenizer_source or model_source)
    model = place_model(load_model(model_source, seed=run.seed), run, topo, device)
    optimizer = build_optimizer(model, optim.lr, optim.weight_decay, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, optim.warmup_steps, run.steps, optim.schedule, optim.min_lr_ratio)
    r = Run(run_dir.path, model, tokenizer, optimizer, scheduler, 0, topo, device, amp_dtype(run.dtype, device))
    latest = run_dir.latest_checkpoint()
    if latest is not None:
        r.start_step = resume(r, latest)
    if topo.is_main:
        run_dir.prepare_resume(r.start_step)
        run_dir.write_config(dataclasses.asdict(config))
    barrier(topo)
    return r


def resume(r: Run, path: Path) -> int:
    """Restore a checkpoint (sharded, saved at any number of processes; or a single-process v1 one)."""
    from r1kit.errors import CheckpointError
    from r1kit.training.checkpointing import checkpoint_format, load_checkpoint, load_sharded_checkpoint

    if checkpoint_format(path) == 1:
        if r.topo.distributed:
            raise CheckpointError(f"{path}: a single-process (format 1) checkpoint; resume it once without "
                                  "torchrun, then the next checkpoint resumes at any number of processes")
        return load_checkpoint(path, load_model_fn=lambda d: load_weights_into(r.model, d), optimizer=r.optimizer,
                               scheduler=r.scheduler).step
    return load_sharded_checkpoint(path, model=r.model, optimizer=r.optimizer, scheduler=r.scheduler,
                                   topo=r.topo).step


def write_hf_metadata(r: Run, directory: Path) -> None:
    """config.json, generation_config.json and the tokenizer: an HF directory without weights, which
    `r1kit export` completes from a checkpoint's sharded weights."""
    import json

    from r1kit.models.config import to_hf_config

    cfg = r.model.config
    hf = to_hf_config(cfg)
    hf["torch_dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    if r.tokenizer is not None and hasattr(r.tokenizer, "save_pretrained"):
        r.tokenizer.save_pretrained(directory)


def save_step(r: Run, step: int, run: RunConfig) -> None:
    """A sharded checkpoint of step `step` (collective: every rank calls it)."""
    from r1kit.training.checkpointing import save_sharded_checkpoint

    save_sharded_checkpoint(r.dir, step, model=r.model, optimizer=r.optimizer, scheduler=r.scheduler,
                            topo=r.topo, write_metadata=lambda d: write_hf_metadata(r, d), keep_last=run.keep_last)


def finish_run(r: Run, plot_keys: list[str]) -> Path:
    """Export the final model (HF format, with tokenizer) to <run>/final and plot the metrics (rank 0 writes;
    collective when sharded)."""
    from r1kit.models.checkpoint import save_model
    from r1kit.training.distributed import barrier, plain_copy
    from r1kit.training.metrics import read_metrics
    from r1kit.training.plots import plot_metrics

    model = plain_copy(r.model, r.topo)  # rank 0: full weights; others: None
    final = r.dir / "final"
    if r.topo.is_main:
        save_model(model, final, tokenizer=r.tokenizer)
        records = read_metrics(r.dir)
        keys = [k for k in plot_keys if any(k in rec for rec in records)]
        if keys:
            plot_metrics(records, keys, r.dir / "metrics.png")
    barrier(r.topo)
    return final


class _RankLogger:
    """What a non-zero rank logs: nothing (rank 0 writes metrics and samples)."""

    def log(self, step, record):
        return record

    def log_samples(self, step, samples):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def metrics_logger(run, total_steps: int, show: tuple[str, ...], progress: bool, desc: str,
                   report_to: list[str] | None = None):
    """Rank 0's MetricsLogger (metrics.jsonl, samples.jsonl, progress bar), also feeding the `report_to`
    trackers; a silent one on other ranks."""
    from r1kit.training.metrics import MetricsLogger

    if not run.topo.is_main:
        return _RankLogger()
    logger = MetricsLogger(run.dir, total_steps=total_steps, start_step=run.start_step, show=show,
                           progress=progress, desc=desc)
    return _Tracked(logger, open_trackers(report_to or [], run.dir)) if report_to else logger


class _Tracked:
    """A MetricsLogger whose numeric records also go to experiment trackers."""

    def __init__(self, logger, trackers: list):
        self.logger, self.trackers = logger, trackers

    def log(self, step, record):
        out = self.logger.log(step, record)
        scalars = {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in self.trackers:
            t(step, scalars)
        return out

    def log_samples(self, step, samples):
        self.logger.log_samples(step, samples)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.logger.close()


def open_trackers(names: list[str], run_dir: Path) -> list:
    """One `f(step, scalars)` per installed tracker; a missing package is skipped with one log line.
    wandb and trackio run offline/locally unless WANDB_MODE (or trackio's own settings) say otherwise."""
    import importlib
    import logging
    import os

    log = logging.getLogger(__name__)
    out = []
    for name in names:
        module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "trackio": "trackio"}[name]
        try:
            lib = importlib.import_module(module)
        except ImportError:
            log.warning("run.report_to: %s is not installed (pip install %s); metrics go to metrics.jsonl only",
                        name, name)
            continue
        if name == "tensorboard":
            writer = lib.SummaryWriter(str(run_dir / "tensorboard"))
            out.append(lambda step, s, w=writer: ([w.add_scalar(k, v, step) for k, v in s.items()], w.flush()))
        elif name == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")
            wb = lib.init(project="r1kit", name=run_dir.name, dir=str(run_dir))
            out.append(lambda step, s, r=wb: r.log(s, step=step))
        else:
            lib.init(project="r1kit", name=run_dir.name)
            out.append(lambda step, s, t=lib: t.log(s, step=step))
    return out


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        forward = block.forward
        block.forward = lambda *args, _f=forward, **kw: checkpoint(_f, *args, use_reentrant=False, **kw)
