"""metrics.jsonl / samples.jsonl writing, reading, truncation on resume, and the progress bar."""

import json

import numpy as np
import pytest
import torch

from r1kit.training.metrics import MetricsLogger, read_metrics, truncate_after_step


def test_log_writes_one_json_line_per_step(tmp_path):
    with MetricsLogger(tmp_path, progress=False) as log:
        log.log(1, {"loss": torch.tensor(0.5), "reward": np.float32(0.25), "n": np.int64(3), "ok": True})
        log.log(2, {"loss": float("nan"), "lr": 1e-3, "name": "x", "none": None})
        log.log_samples(2, [{"prompt": "1+1", "completion": "2", "reward": 1.0}, {"prompt": "2+2"}])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 0.5, "reward": 0.25, "n": 3, "ok": True},
        {"step": 2, "loss": None, "lr": 1e-3, "name": "x", "none": None},
    ]
    assert "NaN" not in lines[1]  # strict JSON
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == [
        {"step": 2, "prompt": "1+1", "completion": "2", "reward": 1.0},
        {"step": 2, "prompt": "2+2"},
    ]
    assert read_metrics(tmp_path) == read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_non_scalar_metric_is_rejected(tmp_path):
    log = MetricsLogger(tmp_path, progress=False)
    with pytest.raises(TypeError, match="'loss'"):
        log.log(1, {"loss": torch.ones(3)})
    with pytest.raises(TypeError, match="'x'"):
        log.log(1, {"x": [1, 2]})
    log.close()


def test_read_metrics_missing_and_torn(tmp_path):
    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_truncate_after_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "v": s * 10}) + "\n" for s in range(1, 7)) + '{"step": 7')
    assert truncate_after_step(path, 4) == 3  # steps 5, 6 and the torn line
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert truncate_after_step(path, 4) == 0
    assert truncate_after_step(tmp_path / "absent.jsonl", 1) == 0


def test_progress_bar_shows_step_and_metrics(tmp_path, capsys):
    with MetricsLogger(tmp_path, total_steps=10, start_step=2, show=("reward",), desc="grpo") as log:
        log.log(3, {"reward": 0.123456, "loss": 1.0})
    err = capsys.readouterr().err
    assert "grpo" in err and "3/10" in err and "reward=0.1235" in err
