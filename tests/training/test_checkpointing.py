"""Checkpoint round trips, crash safety (leftovers, missing markers, real SIGKILLs) and resume equivalence."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from r1kit.errors import CheckpointError
from r1kit.training.checkpointing import (
    RunDir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from r1kit.training.metrics import MetricsLogger, read_metrics
from r1kit.training.optim import build_optimizer, build_scheduler


def saver(model):
    return lambda d: save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors"
    )


def loader(model):
    return lambda d: model.load_state_dict(load_file(d / "model.safetensors"))


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=20)
    return model, opt, sched


def train_step(model, opt, sched, gen):
    x = torch.randn(16, 4, generator=gen)
    loss = (model(x).squeeze(-1) - x.sum(-1)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def draw(gen):
    return (
        random.random(),
        float(np.random.rand()),
        torch.rand(3).tolist(),
        torch.rand(2, generator=gen).tolist(),
    )


def test_round_trip_restores_training_and_rng(tmp_path):
    model, opt, sched = setup()
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        train_step(model, opt, sched, gen)
    path = save_checkpoint(
        tmp_path,
        3,
        save_model_fn=saver(model),
        optimizer=opt,
        scheduler=sched,
        data_state={"epoch": 1, "index": 48},
        extra={"note": "x"},
        generators={"data": gen},
    )
    assert path.name == "step-00000003" and latest_checkpoint(tmp_path) == path
    want_draws = draw(gen)
    want_losses = [train_step(model, opt, sched, gen) for _ in range(3)]
    want_params = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = setup(seed=123)  # different init, untouched optimizer
    gen2 = torch.Generator().manual_seed(999)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    ckpt = load_checkpoint(
        path, load_model_fn=loader(model2), optimizer=opt2, scheduler=sched2, generators={"data": gen2}
    )
    assert (ckpt.step, ckpt.data_state, ckpt.extra) == (3, {"epoch": 1, "index": 48}, {"note": "x"})
    assert ckpt.model_dir == path / "model"
    assert draw(gen2) == want_draws
    assert [train_step(model2, opt2, sched2, gen2) for _ in range(3)] == want_losses
    for p, q in zip(model2.parameters(), want_params):
        assert torch.equal(p, q)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_keep_last_and_resave(tmp_path):
    model, opt, _ = setup()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, save_model_fn=saver(model), optimizer=opt, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    save_checkpoint(tmp_path, 5, save_model_fn=saver(model), keep_last=2, extra={"again": True})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000004", "step-00000005"]
    assert load_checkpoint(latest_checkpoint(tmp_path), restore_rng=False).extra == {"again": True}


def test_partial_checkpoints_are_never_returned(tmp_path):
    model, _, _ = setup()
    good = save_checkpoint(tmp_path, 5, save_model_fn=saver(model))
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000009-abc" / "model").mkdir(parents=True)  # killed while writing
    (root / ".tmp-step-00000009-abc" / "trainer_state.json").write_text(json.dumps({"step": 9}))
    (root / "step-00000010" / "model").mkdir(parents=True)  # no completion marker
    (root / "step-00000011").mkdir()
    (root / "step-00000011" / "trainer_state.json").write_text('{"step": 1')  # torn marker
    (root / "step-00000012").mkdir()
    (root / "step-00000012" / "trainer_state.json").write_text('{"step": 3}')  # marker of another step
    assert latest_checkpoint(tmp_path) == good
    for bad in ["step-00000010", "step-00000011", "step-00000012"]:
        with pytest.raises(CheckpointError, match="not a complete checkpoint"):
            load_checkpoint(root / bad)
    save_checkpoint(tmp_path, 6, save_model_fn=saver(model), keep_last=None)  # sweeps the hidden leftovers
    assert not any(p.name.startswith(".") for p in root.iterdir())


def test_failed_save_leaves_nothing(tmp_path):
    def broken(d):
        (d / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 1, save_model_fn=broken)
    assert latest_checkpoint(tmp_path) is None and os.listdir(tmp_path / "checkpoints") == []


def test_missing_optimizer_state_is_reported(tmp_path):
    model, opt, _ = setup()
    path = save_checkpoint(tmp_path, 1, save_model_fn=saver(model))
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        load_checkpoint(path, optimizer=opt)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from r1kit.training.checkpointing import save_checkpoint
    from torch import nn
    model = nn.Linear(256, 256)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 256)).sum().backward(); opt.step()
    def save_model(d):
        for i in range(20):  # many files, so that kills land inside the write
            save_file({"w": model.weight.detach().clone()}, d / f"shard-{i}.safetensors")
    print("ready", flush=True)
    step = int(sys.argv[2])
    while True:
        step += 1
        save_checkpoint(sys.argv[1], step, save_model_fn=save_model, optimizer=opt, keep_last=2)
        print("saved", step, flush=True)
    """
)


def test_sigkill_never_leaves_a_partial_latest(tmp_path):
    """Kill a saving process twice: early in its first save, then just after a few completed saves."""
    start = 0
    for saves_before_kill in (0, 3):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(saves_before_kill):
            assert proc.stdout.readline().startswith("saved")
        time.sleep(0.02)  # lands inside the next save (model shards, fsyncs, rename or pruning)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = latest_checkpoint(tmp_path)
        if latest is None:
            assert saves_before_kill == 0
            continue
        assert len(list((latest / "model").glob("shard-*.safetensors"))) == 20
        for shard in (latest / "model").glob("*.safetensors"):
            assert load_file(shard)["w"].shape == (256, 256)
        opt = torch.optim.AdamW(nn.Linear(256, 256).parameters())
        ckpt = load_checkpoint(latest, optimizer=opt, restore_rng=False)
        assert ckpt.step >= start + saves_before_kill
        start = ckpt.step  # the next run resumes from here, re-saving over any partial successor


# --------------------------------------------------------------------------------------------- run directory
@dataclass
class Cfg:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.95)
    out: Path = Path("/tmp/run")


def test_write_config_is_plain_yaml(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"model": "toy", "train": Cfg()})
    assert run.read_config() == {
        "model": "toy",
        "train": {"lr": 1e-3, "betas": [0.9, 0.95], "out": "/tmp/run"},
    }
    assert [p.name for p in run.path.iterdir()] == ["config.yaml"]


def run_loop(run_dir, total, crash_after=None):
    """A miniature training loop written the way the real ones are: resume, step, log, then checkpoint."""
    run = RunDir(run_dir)
    model, opt, sched = setup()
    gen = torch.Generator().manual_seed(11)
    start = 0
    if (latest := run.latest_checkpoint()) is not None:
        start = load_checkpoint(
            latest, load_model_fn=loader(model), optimizer=opt, scheduler=sched, generators={"data": gen}
        ).step
    run.prepare_resume(start)
    with MetricsLogger(run.path, total_steps=total, start_step=start, progress=False) as log:
        for step in range(start + 1, total + 1):
            loss = train_step(model, opt, sched, gen)
            log.log(step, {"loss": loss, "lr": sched.get_last_lr()[0]})
            log.log_samples(step, [{"text": f"sample {step}"}])
            if step == crash_after:
                return
            if step % 2 == 0:
                save_checkpoint(
                    run.path,
                    step,
                    save_model_fn=saver(model),
                    optimizer=opt,
                    scheduler=sched,
                    generators={"data": gen},
                )


def test_resumed_run_metrics_equal_uninterrupted(tmp_path):
    run_loop(tmp_path / "a", 7)
    run_loop(tmp_path / "b", 7, crash_after=5)  # checkpoint at 4, metrics up to 5
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss"')  # torn line from the kill
    run_loop(tmp_path / "b", 7)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 8))
    assert a == b
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
