"""The one device setting: resolution and its errors, autocast on the device in use, training on `device`.

`R1KIT_TEST_DEVICE=cuda python -m pytest -q tests/training/test_device.py` runs the device-parametrized
tests on a GPU."""

import json

import pytest
import torch

from r1kit.config import load_config
from r1kit.device import resolve_device
from r1kit.errors import ConfigError
from r1kit.training.distributed import Topology, rank_share
from r1kit.training.fit import BatchConfig
from r1kit.training.loop import RunConfig, amp_dtype, autocast


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_device(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="expected auto | cpu"):
        resolve_device("gpu")


def test_device_cuda_without_cuda_is_a_one_line_error(no_cuda, capsys):
    from r1kit.cli import main

    assert main(["generate", "--model", "toy-dense", "--prompt", "hi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1kit: error: device 'cuda': CUDA is not available") and "\n" not in err


def test_run_device_is_validated_at_load():
    from r1kit.training.sft import SFTConfig

    with pytest.raises(ConfigError, match="run.device"):
        load_config(SFTConfig, overrides={"run": {"device": "gpu0"}})


def test_autocast_follows_the_device_in_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU exists, but the model is on the CPU
    with autocast(RunConfig(dtype="bfloat16"), torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert amp_dtype("auto", torch.device("cpu")) is None  # fp32 on the CPU
    assert amp_dtype("auto", torch.device("cuda")) == torch.bfloat16  # bf16 autocast on GPUs
    assert amp_dtype("float32", torch.device("cuda")) is None


def test_global_batch_split_and_deprecated_grad_accum():
    old = BatchConfig(batch_size=2, grad_accum=3)  # the old meaning: 3 micro-batches of 2
    assert (old.batch_size, old.micro_batch_size, old.grad_accum) == (6, 2, None)
    rows = list(range(8))
    assert rank_share(rows, Topology(rank=1, world_size=2)) == [4, 5, 6, 7]
    assert rank_share(rows, Topology()) == rows
    with pytest.raises(ConfigError, match="batch.batch_size: 8 does not split evenly over 3"):
        rank_share(rows, Topology(rank=0, world_size=3))


def test_load_model_on_device(device):
    from r1kit.models.checkpoint import load_model

    model = load_model("toy-dense", device=str(device))
    assert {p.device.type for p in model.parameters()} == {device.type}
    assert model(torch.tensor([[1, 5, 7]], device=device)).device.type == device.type


def test_sft_trains_on_device(device, tmp_path):
    from r1kit.models.checkpoint import load_model
    from r1kit.training.sft import SFTConfig, sft

    cfg = load_config(SFTConfig, overrides={
        "model": "toy-dense", "tasks": {"tasks": ["addition"], "level": 1, "num_train": 4, "num_test": 2},
        "batch": {"seq_len": 128, "batch_size": 4, "micro_batch_size": 2},
        "run": {"output_dir": str(tmp_path / "sft"), "steps": 3, "save_every": 3, "progress": False,
                "device": str(device)},
        "optim": {"lr": 3e-3, "schedule": "constant"}})
    sft(cfg)
    records = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["loss"] < records[0]["loss"]
    assert load_model(tmp_path / "sft" / "final")(torch.tensor([[1, 5]])).shape == (1, 2, 128)
