"""PNG plots of a run's metrics: one panel per metric against the step.

Draws on a bare `matplotlib.figure.Figure` with the Agg canvas, so it never touches pyplot's global state or
needs a display, and writes the file atomically. Records lacking a key, or holding null/non-numeric values for
it, are skipped in that panel; keys absent from every record get no panel.

Left out: smoothing, multiple runs on one panel, interactive output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from r1kit.errors import R1kitError
from r1kit.io import atomic_write
from r1kit.training.metrics import read_metrics

DEFAULT_KEYS = ("reward", "accuracy", "completion_length", "kl", "loss", "lr")


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, keeping records where both are finite numbers."""
    steps, values = [], []
    for r in records:
        s, v = r.get("step"), r.get(key)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if number and isinstance(s, (int, float)) and math.isfinite(v):
            steps.append(s)
            values.append(v)
    return steps, values


def metrics_figure(
    records: Sequence[Mapping[str, Any]], keys: Sequence[str], title: str | None = None
) -> Figure:
    """A figure with one axes per key that has data, in the order given (up to 3 panels per row)."""
    panels = [(k, *series(records, k)) for k in keys]
    panels = [p for p in panels if p[1]]
    if not panels:
        raise R1kitError(f"no metric among {list(keys)} has values to plot")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, steps, values) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_metrics(
    source: str | os.PathLike | Sequence[Mapping[str, Any]],
    keys: Sequence[str] = DEFAULT_KEYS,
    out_png: str | os.PathLike | None = None,
    title: str | None = None,
) -> Path:
    """Plot metrics from a run directory, a metrics.jsonl file or a list of records into `out_png`.

    out_png defaults to `<run_dir>/metrics.png` when source is a directory. Returns the written path.
    """
    if isinstance(source, (str, os.PathLike)):
        records = read_metrics(source)
        if out_png is None:
            base = Path(source)
            out_png = (base if base.is_dir() else base.parent) / "metrics.png"
    else:
        records = list(source)
    if out_png is None:
        raise ValueError("out_png is required when plotting records")
    fig = metrics_figure(records, keys, title)
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
