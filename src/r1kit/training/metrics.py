"""Per-step metrics: `metrics.jsonl` (one JSON object per optimizer step), `samples.jsonl`, a progress bar.

Every line is appended whole and fsynced (`r1kit.io.append_jsonl`), so a kill leaves at most one torn last
line, which readers skip. On resume from a checkpoint at step s, `truncate_after_step` drops the lines of
steps > s (they are about to be recomputed), so a resumed run's file equals an uninterrupted run's. For that
to hold, a loop logs step s *before* it saves the checkpoint of step s.

Values are stored as JSON numbers, strings, booleans or null; 0-d tensors and numpy scalars become Python
numbers, and NaN/inf become null (strict JSON has no NaN).

Left out: TensorBoard / W&B sinks, multi-process aggregation (log from rank 0 only).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from r1kit.io import append_jsonl, atomic_write_text, read_jsonl

if TYPE_CHECKING:
    from typing_extensions import Self

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


def _json_value(key: str, value: Any) -> Any:
    """A JSON-safe scalar for `value`, or TypeError naming the metric."""
    if hasattr(value, "item"):  # one-element torch tensor or numpy scalar
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise TypeError(f"metric {key!r} must be a scalar, got shape {tuple(value.shape)}") from None
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {key!r} must be a number, string, bool or None, got {type(value).__name__}")


def _json_record(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _json_value(k, v) for k, v in record.items()}


class MetricsLogger:
    """Appends metrics/samples for a run directory and drives a progress bar (step, chosen metrics, ETA).

    `show` names the metrics displayed next to the bar; `start_step` is the last completed step when resuming.
    Use as a context manager, or call `close()`, to finish the bar.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        total_steps: int | None = None,
        start_step: int = 0,
        show: Sequence[str] = ("loss", "reward"),
        progress: bool = True,
        desc: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.samples_path = self.run_dir / SAMPLES_FILE
        self.show = tuple(show)
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            disable=not progress,
        )

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Append `{"step": step, **metrics}` as one line, advance the bar to `step`; returns the record."""
        record = _json_record({"step": int(step), **metrics})
        append_jsonl(self.metrics_path, record)
        shown = {k: record[k] for k in self.show if record.get(k) is not None}
        self._bar.set_postfix(
            {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}, refresh=False
        )
        self._bar.update(max(0, int(step) - self._bar.n))
        return record

    def log_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        """Append one line per sample (e.g. prompt, completion, reward), each tagged with `step`."""
        for sample in samples:
            append_jsonl(self.samples_path, _json_record({"step": int(step), **sample}))

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _metrics_path(source: str | os.PathLike) -> Path:
    path = Path(source)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(source: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run directory's metrics.jsonl (or of the given .jsonl file); [] when there is none."""
    path = _metrics_path(source)
    return list(read_jsonl(path)) if path.exists() else []


def truncate_after_step(path: str | os.PathLike, step: int) -> int:
    """Atomically drop records with "step" > `step` (and a torn last line); returns how many were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    kept = [r for r in read_jsonl(path) if not (isinstance(r.get("step"), int) and r["step"] > step)]
    if len(kept) != total:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return total - len(kept)
