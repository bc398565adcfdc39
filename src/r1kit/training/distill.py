"""Distillation (DeepSeek-R1 §2.4): a teacher's verified reasoning traces, SFT'd into a small dense student.

    r1kit distill --config distill.yaml

1. Traces: the teacher (any r1kit-loadable model) samples k replies per task prompt, or a JSONL of traces
   produced elsewhere is read (`traces`). Either way they go through rejection sampling's filters
   (`select_traces`: verified, well-formed, single-language, not repetitive, deduplicated, capped per prompt)
   and are written to `<run>/traces.jsonl` (+ `.summary.json`); a re-run reuses them.
2. Student: a dense Qwen2/Llama model: a preset or checkpoint directory (`student`), optionally with
   `student_overrides` (ModelConfig fields, e.g. dim or n_layers) for a freshly initialised one of any size.
3. SFT of the student on the traces with the shared pretrain/SFT loop (loss on the reply only), plus an
   optional forward-KL logit distillation term (`kd.weight`, `kd.temperature`) when teacher and student share
   the vocabulary. The student is exported in HF format to `<run>/final` (loads in transformers).

Trace file rows: `completion` (the reply: reasoning, `</think>`, answer), the prompt as `messages` or
`question` (formatted with tasks.prompt_template), the gold fields the accuracy reward reads (`answer`, or
`numbers` + `target`, `choices`, `tests`), optional `finish_reason` and `id`.

Left out: on-policy distillation (student samples, teacher scores), sequence-level KD across tokenizers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import field
from pathlib import Path
from typing import Any

from pydantic import NonNegativeInt, PositiveInt

from r1kit.config import configclass
from r1kit.errors import ConfigError, R1kitError
from r1kit.training.fit import BatchConfig
from r1kit.training.lm_loss import KDConfig
from r1kit.training.loop import OptimConfig, RunConfig
from r1kit.training.rejection import FilterConfig, SamplingConfig
from r1kit.training.tasks import TaskData

DENSE_ARCHS = ("qwen2", "llama")


@configclass
class DistillConfig:
    teacher: str | None = None  # r1kit-loadable teacher (preset, HF dir, .gguf): samples traces, gives kd logits
    traces: str | None = None  # a JSONL of teacher traces produced elsewhere (used instead of sampling)
    tokenizer: str | None = None  # default: the teacher's, else the student's
    student: str = "toy-dense"  # dense preset or checkpoint directory
    student_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (fresh student)
    tasks: TaskData = field(default_factory=TaskData)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    filters: FilterConfig = field(default_factory=lambda: FilterConfig(max_per_prompt=2))
    kd: KDConfig = field(default_factory=KDConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/distill"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine"))
    eval_every: NonNegativeInt = 0  # student's greedy held-out accuracy every N steps; 0 = off
    eval_size: PositiveInt = 100
    max_new_tokens: PositiveInt = 128

    def __post_init__(self):
        if self.teacher is None and self.traces is None:
            raise ConfigError("give a teacher (a model) or traces (a JSONL file); with both, the file's traces "
                              "are used and the teacher only supplies logits for kd")
        if self.kd.weight > 0 and self.teacher is None:
            raise ConfigError("kd.weight > 0 needs a teacher model (logits), not only a traces file")


# ---- traces ------------------------------------------------------------------------------------------------------

def read_trace_candidates(path: str, tasks: TaskData) -> list:
    """Candidates from a trace file (see the module docstring); errors name the row."""
    from r1kit.data import read_records
    from r1kit.training.rejection import Candidate
    from r1kit.training.tasks import example_messages

    out = []
    for i, row in enumerate(read_records(path)):
        if not isinstance(row.get("completion"), str):
            raise R1kitError(f"{path} row {i}: missing text field 'completion'")
        if isinstance(row.get("messages"), list):
            messages = row["messages"]
        elif isinstance(row.get("question"), str):
            messages = example_messages(row, tasks)
        else:
            raise R1kitError(f"{path} row {i}: needs the prompt as 'messages' or 'question'")
        example = {k: v for k, v in row.items() if k not in ("completion", "messages", "finish_reason")}
        example.setdefault("id", f"row-{i}")
        out.append(Candidate(example, messages, row["completion"], row.get("finish_reason", "stop")))
    return out


def teacher_traces(cfg: DistillConfig, run_dir: Path) -> tuple[Path, dict]:
    """Verified traces as a chat dataset in the run directory (reused when a previous run wrote them)."""
    from r1kit.training.rejection import sample_candidates, select_traces, write_dataset

    path, summary_path = run_dir / "traces.jsonl", run_dir / "traces.jsonl.summary.json"
    if path.exists() and summary_path.exists():
        return path, json.loads(summary_path.read_text())
    if cfg.traces:
        candidates = read_trace_candidates(cfg.traces, cfg.tasks)
    else:
        import torch

        from r1kit.models.checkpoint import load_model
        from r1kit.tokenizer import load_tokenizer
        from r1kit.training.tasks import load_examples

        teacher = load_model(cfg.teacher, seed=cfg.run.seed).eval()
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.teacher)
        with torch.no_grad():
            candidates = sample_candidates(teacher, tokenizer, load_examples(cfg.tasks, "train", cfg.run.seed),
                                           cfg.tasks, cfg.sampling, cfg.run.seed)
    rows, summary = select_traces(candidates, cfg.filters)
    if not rows:
        raise R1kitError(f"no teacher trace passed the filters ({summary['rejected']}); nothing to distill")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_dataset(rows, summary, str(path))
    return path, summary


# ---- student -----------------------------------------------------------------------------------------------------

def student_source(cfg: DistillConfig, run_dir: Path) -> str:
    """The student's model source for `start_run`: `student` itself, or a fresh model of preset + overrides
    written once to `<run>/student_init`."""
    if not cfg.student_overrides:
        return cfg.student
    init = run_dir / "student_init"
    if not (init / "config.json").exists():
        import torch

        from r1kit.models.checkpoint import save_model
        from r1kit.models.config import get_preset
        from r1kit.models.transformer import Transformer
        from r1kit.tokenizer import load_tokenizer

        unknown = sorted(set(cfg.student_overrides) - {f.name for f in dataclasses.fields(get_preset(cfg.student))})
        if unknown:
            raise ConfigError(f"student_overrides: unknown model config field {unknown[0]!r}")
        model_cfg = dataclasses.replace(get_preset(cfg.student), **cfg.student_overrides)
        torch.manual_seed(cfg.run.seed)
        save_model(Transformer(model_cfg), init, tokenizer=load_tokenizer(cfg.tokenizer or cfg.student))
    return str(init)


def distill(cfg: DistillConfig) -> dict:
    from r1kit.training.evaluator import Evaluator
    from r1kit.training.fit import fit
    from r1kit.training.loop import start_run
    from r1kit.training.packing import chat_sample

    run_dir = Path(cfg.run.output_dir)
    traces, summary = teacher_traces(cfg, run_dir)
    run = start_run(cfg, cfg.run, cfg.optim, student_source(cfg, run_dir), cfg.tokenizer or cfg.teacher)
    if run.model.config.arch not in DENSE_ARCHS:
        raise ConfigError(f"student must be a dense {'/'.join(DENSE_ARCHS)} model, got {run.model.config.arch!r}")
    teacher = None
    if cfg.kd.weight > 0:
        from r1kit.models.checkpoint import load_model

        teacher = load_model(cfg.teacher, seed=cfg.run.seed).eval().requires_grad_(False)
        if teacher.config.vocab_size != run.model.config.vocab_size:
            raise ConfigError("logit distillation needs a shared tokenizer: teacher and student vocab sizes "
                              f"differ ({teacher.config.vocab_size} vs {run.model.config.vocab_size})")
    from r1kit.data import load_chat_dataset

    samples = [chat_sample(run.tokenizer, row["messages"]) for row in load_chat_dataset(str(traces))]
    evaluate = (Evaluator.build(run.tokenizer, cfg.tasks, cfg.eval_size, cfg.max_new_tokens, cfg.eval_every,
                                cfg.run.seed) if cfg.eval_every else None)
    last = fit(run, samples, cfg.batch, cfg.run, cfg.optim, desc="distill", teacher=teacher, kd=cfg.kd,
               evaluate=evaluate)
    return {**last, "traces": summary}


def summarize(cfg: DistillConfig, last: dict) -> str:
    return f"done: {last['traces']['kept']} traces; student in {cfg.run.output_dir}/final"


__all__ = ["DistillConfig", "distill", "read_trace_candidates", "student_source", "teacher_traces"]
