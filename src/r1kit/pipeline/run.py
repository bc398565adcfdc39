"""Run a recipe: each stage in order (skipping finished ones), then evaluation and the report.

A stage is finished when `output_dir/<stage>/DONE` exists; it is written after the stage's own outputs, so
an interrupted stage reruns and its recipe resumes from its last checkpoint. `--from STAGE` clears that
stage and every later one (and their evaluations) before running.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from r1kit.io import atomic_write_json, atomic_write_text
from r1kit.pipeline.recipe import Recipe

DONE = "DONE"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_stage(recipe: Recipe, stage) -> dict:
    _, run = stage.spec.load()
    return run(stage.config)


def clear_from(recipe: Recipe, name: str) -> None:
    names = [s.name for s in recipe.stages]
    for s in names[names.index(recipe.stage(name).name):]:
        shutil.rmtree(recipe.stage_dir(s), ignore_errors=True)
        # earlier stages' (and the base model's) evaluations stay: their models did not change
        shutil.rmtree(recipe.output_dir / "eval" / s, ignore_errors=True)


def run_pipeline(recipe: Recipe, from_stage: str | None = None, progress: bool = True) -> dict:
    from r1kit.pipeline.evaluate import check_held_out

    check_held_out(recipe)  # before any training: the evaluation data is never trained on
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    if from_stage:
        clear_from(recipe, from_stage)
    timings = _read_json(recipe.output_dir / "timings.json")
    total = len(recipe.stages) + 2
    for i, stage in enumerate(recipe.stages, start=1):
        done = recipe.stage_dir(stage.name) / DONE
        if done.exists():
            _say(f"[{i}/{total}] {stage.name} ({stage.kind}): done, skipped")
            continue
        _say(f"[{i}/{total}] {stage.name} ({stage.kind})" + (f" from {stage.init}" if stage.init else ""))
        if not progress and hasattr(stage.config, "run"):
            stage.config.run.progress = False
        t0 = time.perf_counter()
        result = run_stage(recipe, stage)
        timings[stage.name] = round(time.perf_counter() - t0, 1)
        atomic_write_json(recipe.output_dir / "timings.json", timings)
        atomic_write_text(done, json.dumps(_plain(result)) + "\n")
    _say(f"[{total - 1}/{total}] evaluate")
    t0 = time.perf_counter()
    from r1kit.pipeline.evaluate import evaluate_stages

    results = evaluate_stages(recipe, progress=progress)
    timings["evaluate"] = round(time.perf_counter() - t0, 1)
    _say(f"[{total}/{total}] report")
    t0 = time.perf_counter()
    from r1kit.pipeline.report import write_report

    report = write_report(recipe, results, timings)
    timings["report"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(recipe.output_dir / "timings.json", timings)
    return {"report": str(report), "results": results, "timings": timings}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return str(obj)
