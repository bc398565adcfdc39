"""Pipeline recipes: a YAML file that chains r1kit's stage commands, with checkpoints between stages.

    output_dir: runs/r1-toy
    seed: 0
    model: toy-moe                 # the model pretraining starts from (preset or checkpoint)
    tasks: {tasks: [addition, counting], level: 2, num_test: 100, prompt_template: "{question}"}
    stages:
      pretrain:   {kind: pretrain, config: {...}}                 # PretrainConfig fields
      r1_zero:    {kind: grpo, init: pretrain, config: {...}}     # GRPOConfig fields
      cold_start: {kind: sft, init: pretrain, config: {...}}      # SFTConfig fields
      rejection:  {kind: rejection, init: r1_rl, config: {...}}   # RejectionConfig fields
      r1_sft:     {kind: sft, init: pretrain, data: rejection, config: {...}}
      distill:    {kind: distill, init: r1_final, config: {...}}  # DistillConfig fields (init = teacher)
    evaluate: {samples: 4, problems: 50, max_new_tokens: 96, temperature: 0.6, top_p: 0.95}

Each stage writes into `output_dir/<stage>`; r1kit fills in what connects the stages (the model to start
from, the task definition, the output directory, the seed), so a stage's `config` holds only its own
settings. Every stage config is built and validated before any stage runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1kit.config import build, merge, parse_overrides, read_yaml
from r1kit.errors import ConfigError

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "r1_toy.yaml"
KINDS = ("pretrain", "sft", "grpo", "rejection", "distill")
BASE = "base"  # the evaluation name of the recipe's starting model


@dataclass
class EvalSettings:
    samples: int = 4  # k samples per problem (pass@1 over k, cons@k)
    problems: int = 50  # held-out problems per task
    max_new_tokens: int = 128
    temperature: float = 0.6
    top_p: float = 0.95
    batch_size: int = 64
    stages: list[str] | None = None  # default: every stage that produces a model (+ "base" without pretraining)
    grader: str | None = None  # override the tasks' grader (e.g. last_number for a model answering in prose)


@dataclass
class Stage:
    name: str
    kind: str
    init: str | None  # the stage whose model this one starts from (distill: the teacher)
    data: str | None  # the rejection stage whose dataset an sft stage trains on
    config: Any  # the stage's validated config dataclass

    @property
    def makes_model(self) -> bool:
        return self.kind != "rejection"


@dataclass
class Recipe:
    output_dir: Path
    seed: int
    model: str
    tasks: Any  # r1kit.training.tasks.TaskData
    stages: list[Stage]
    evaluate: EvalSettings = field(default_factory=EvalSettings)
    name: str = "r1"

    def stage(self, name: str) -> Stage:
        if name == BASE:
            return Stage(BASE, "base", None, None, None)
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"recipe: no stage named {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def stage_dir(self, name: str) -> Path:
        return self.output_dir / name

    def model_path(self, name: str) -> str:
        """A stage's final model; "base" is the model the recipe starts from."""
        return self.model if name == BASE else str(self.stage_dir(name) / "final")


def _config_class(kind: str):
    from r1kit.training.distill import DistillConfig
    from r1kit.training.grpo import GRPOConfig
    from r1kit.training.rejection import RejectionConfig
    from r1kit.training.sft import PretrainConfig, SFTConfig

    return {"pretrain": PretrainConfig, "sft": SFTConfig, "grpo": GRPOConfig, "rejection": RejectionConfig,
            "distill": DistillConfig}[kind]


def _wire(kind: str, cfg: dict, *, recipe: dict, out: Path, name: str, init_path: str | None,
          data_path: str | None) -> dict:
    """Fill in the fields that connect a stage to the recipe and to the stages before it."""
    cfg = copy.deepcopy(cfg)
    run = {"output_dir": str(out / name), "seed": recipe["seed"]}
    tasks = recipe["tasks"]
    if kind == "pretrain":
        cfg.setdefault("model", recipe["model"])
        cfg["run"] = merge(cfg.get("run", {}), run)
    elif kind == "grpo":
        cfg["model"], cfg["data"] = init_path, merge(tasks, cfg.get("data", {}))
        cfg["run"] = merge(cfg.get("run", {}), run)
    elif kind == "sft":
        cfg["model"], cfg["tasks"] = init_path, merge(tasks, cfg.get("tasks", {}))
        cfg["run"] = merge(cfg.get("run", {}), run)
        if data_path:
            cfg["data"] = merge(cfg.get("data", {}), {"dataset": data_path})
    elif kind == "rejection":
        cfg["model"], cfg["tasks"] = init_path, merge(tasks, cfg.get("tasks", {}))
        cfg["output"], cfg["seed"] = str(out / name / "sft.jsonl"), recipe["seed"]
    elif kind == "distill":
        cfg["teacher"], cfg["tasks"] = init_path, merge(tasks, cfg.get("tasks", {}))
        cfg["run"] = merge(cfg.get("run", {}), run)
    return cfg


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                output_dir: str | None = None) -> Recipe:
    """Read, wire and validate a recipe. `overrides` are `stage.field=value` or top-level `field=value`."""
    from r1kit.training.tasks import TaskData

    path = Path(path) if path else DEFAULT_RECIPE
    raw = merge(read_yaml(path), _stage_overrides(read_yaml(path), parse_overrides(overrides)))
    where = str(path)
    unknown = sorted(set(raw) - {"name", "output_dir", "seed", "model", "tasks", "stages", "evaluate"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level field {unknown[0]!r}")
    if output_dir:
        raw["output_dir"] = output_dir
    raw.setdefault("seed", 0)
    raw.setdefault("model", "toy-moe")
    raw["tasks"] = raw.get("tasks") or {}
    tasks = build(TaskData, raw["tasks"], f"{where}: tasks")
    out = Path(raw.get("output_dir", "runs/pipeline"))
    stages: list[Stage] = []
    if not raw.get("stages"):
        raise ConfigError(f"{where}: no stages")
    for name, spec in raw["stages"].items():
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            raise ConfigError(f"{where}: stage {name!r} needs kind: one of {', '.join(KINDS)}")
        extra = sorted(set(spec) - {"kind", "init", "data", "config"})
        if extra:
            raise ConfigError(f"{where}: stage {name!r}: unknown key {extra[0]!r}")
        known = [s.name for s in stages]
        for ref in ("init", "data"):
            if spec.get(ref) and spec[ref] not in known:
                raise ConfigError(f"{where}: stage {name!r}: {ref} {spec[ref]!r} is not an earlier stage")
        # without init, a stage starts from the recipe's model (a preset, checkpoint or GGUF)
        init_path = str(out / spec["init"] / "final") if spec.get("init") else raw["model"]
        data_path = str(out / spec["data"] / "sft.jsonl") if spec.get("data") else None
        wired = _wire(spec["kind"], spec.get("config") or {}, recipe=raw, out=out, name=name, init_path=init_path,
                      data_path=data_path)
        cfg = build(_config_class(spec["kind"]), wired, f"{where}: stages.{name}.config")
        stages.append(Stage(name, spec["kind"], spec.get("init"), spec.get("data"), cfg))
    evaluate = build(EvalSettings, raw.get("evaluate") or {}, f"{where}: evaluate")
    for s in evaluate.stages or []:
        if s not in [st.name for st in stages] + [BASE]:
            raise ConfigError(f"{where}: evaluate.stages names unknown stage {s!r}")
    return Recipe(out, raw["seed"], raw["model"], tasks, stages, evaluate, raw.get("name", path.stem))


def _stage_overrides(raw: dict, overrides: dict) -> dict:
    """`--set r1_zero.beta=0.1` means stages.r1_zero.config.beta; top-level keys pass through."""
    stages = raw.get("stages") or {}
    out: dict = {}
    for key, value in overrides.items():
        if key in stages:
            out.setdefault("stages", {}).setdefault(key, {})["config"] = value
        else:
            out[key] = value
    return out
