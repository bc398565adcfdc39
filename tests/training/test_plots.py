"""Plots: panels carry exactly the records' values, and the PNG is a real image written atomically."""

import json

import matplotlib.image
import pytest

from r1kit.errors import R1kitError
from r1kit.training.plots import metrics_figure, plot_metrics

RECORDS = [
    {"step": 1, "reward": 0.1, "kl": None, "loss": 2.0},
    {"step": 2, "reward": 0.3, "kl": 0.01, "loss": float("nan")},
    {"step": 3, "reward": 0.2, "kl": 0.02, "loss": 1.5, "note": "text"},
]


def test_one_panel_per_key_with_the_records_values():
    fig = metrics_figure(RECORDS, ["reward", "kl", "loss", "missing"])
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["reward", "kl", "loss"]
    data = {ax.get_title(): ax.get_lines()[0].get_xydata().tolist() for ax in axes}
    assert data == {
        "reward": [[1, 0.1], [2, 0.3], [3, 0.2]],
        "kl": [[2, 0.01], [3, 0.02]],
        "loss": [[1, 2.0], [3, 1.5]],
    }


def test_plot_from_run_dir_writes_png(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:1] + RECORDS[2:]))
    out = plot_metrics(tmp_path, ["reward", "loss"])
    assert out == tmp_path / "metrics.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(out).shape
    assert (width, height) == (840, 300)  # two panels of 4.2 x 3.0 inches at 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "metrics.png"]


def test_plot_records_needs_out_and_data(tmp_path):
    assert plot_metrics(RECORDS, ["reward"], tmp_path / "r.png", title="run").exists()
    with pytest.raises(ValueError, match="out_png"):
        plot_metrics(RECORDS, ["reward"])
    with pytest.raises(R1kitError, match="no metric"):
        plot_metrics(RECORDS, ["accuracy"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
