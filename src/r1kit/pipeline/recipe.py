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

A recipe on files (GSM8K, MATH) names their folder once, `data_dir`, and writes `{data_dir}` in its paths
(`tasks: {dataset: "{data_dir}/gsm8k/train.jsonl", layout: gsm8k}`, `evaluate: {benchmark: gsm8k, data:
"{data_dir}/gsm8k/test.jsonl"}`); `--set data_dir=PATH` moves them all. A path filled that way must exist when
the recipe loads: a missing file is an R1kitError naming it, before any stage runs.

Each stage writes into `output_dir/<stage>`; r1kit fills in what connects the stages (the model to start
from, the task definition, the output directory, the seed: the recipe's seed plus the stage's index), so a stage's `config` holds only its own
settings. Every stage config is built and validated before any stage runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveInt

from r1kit.config import build, configclass, merge, parse_overrides, read_yaml
from r1kit.errors import ConfigError, R1kitError
from r1kit.tools.python import ToolConfig
from r1kit.training.loop import DeviceSetting
from r1kit.training.recipes import RECIPES, RecipeSpec

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "r1_toy.yaml"
BASE = "base"  # the evaluation name of the recipe's starting model


@configclass
class EvalSettings:
    samples: PositiveInt = 4  # k samples per problem (pass@1 over k, cons@k)
    problems: PositiveInt = 50  # held-out problems per task
    max_new_tokens: PositiveInt = 128
    temperature: NonNegativeFloat = 0.6
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    batch_size: PositiveInt = 64
    device: DeviceSetting = "auto"  # where the stages' models are evaluated
    stages: list[str] | None = None  # default: every stage that produces a model (+ "base" without pretraining)
    grader: str | None = None  # override the tasks' grader (e.g. last_number for a model answering in prose)
    # a registered benchmark (gsm8k, math500, ...) evaluated instead of the recipe's synthetic tasks, asked with
    # the recipe's prompt_template; its first `problems` rows of `data`
    benchmark: str | None = None
    data: str | None = None
    greedy: bool = False  # also greedy pass@1 (one sample at temperature 0), reported as "<benchmark> greedy"
    matmul_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: the engine's bf16 matmuls (CPU AMX)
    tools: ToolConfig | None = None  # every stage's model may call the sandboxed Python interpreter

    def __post_init__(self):
        if self.greedy and self.benchmark is None:
            raise ConfigError("evaluate.greedy needs evaluate.benchmark")
        if self.benchmark is not None:
            from r1kit.evaluation.benchmarks import get_benchmark

            get_benchmark(self.benchmark)  # an unknown name fails at load, naming the built-in ones


@dataclass
class Stage:
    name: str
    kind: str
    init: str | None  # the stage whose model this one starts from (distill: the teacher)
    data: str | None  # the rejection stage whose dataset an sft stage trains on
    config: Any  # the stage's validated config dataclass

    @property
    def spec(self) -> RecipeSpec:
        return RECIPES[self.kind]

    @property
    def makes_model(self) -> bool:
        return self.kind != BASE and self.spec.makes_model


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


def _wire(spec: RecipeSpec, cfg: dict, *, recipe: dict, stage_dir: Path, seed: int, init_path: str | None,
          data_path: str | None) -> dict:
    """Fill in the fields that connect a stage to the recipe and to the stages before it."""
    cfg = copy.deepcopy(cfg)
    if init_path:
        cfg[spec.model_field] = init_path
    else:  # without init, a stage starts from its own model or the recipe's (a preset, checkpoint or GGUF)
        cfg.setdefault(spec.model_field, recipe["model"])
    if spec.tasks_field:
        cfg[spec.tasks_field] = merge(recipe["tasks"], cfg.get(spec.tasks_field, {}))
    if data_path:
        cfg[spec.dataset_field] = merge(cfg.get(spec.dataset_field, {}), {"dataset": data_path})
    if spec.makes_model:
        cfg["run"] = merge(cfg.get("run", {}), {"output_dir": str(stage_dir), "seed": seed})
    else:
        cfg["output"], cfg["seed"] = str(stage_dir / spec.product), seed
    return cfg


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                output_dir: str | None = None) -> Recipe:
    """Read, wire and validate a recipe. `overrides` are `stage.field=value` or top-level `field=value`."""
    from r1kit.training.tasks import TaskData

    path = Path(path) if path else DEFAULT_RECIPE
    raw = merge(read_yaml(path), _stage_overrides(read_yaml(path), parse_overrides(overrides)))
    where = str(path)
    unknown = sorted(set(raw) - {"name", "output_dir", "seed", "model", "data_dir", "tasks", "stages", "evaluate"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level field {unknown[0]!r}")
    raw, data_files = fill_data_dir(raw, raw.get("data_dir"), where)
    for field_name, file in data_files:
        if not file.startswith("hf:") and not Path(file).is_file():
            raise R1kitError(f"data file not found: {file} ({field_name}, under data_dir {raw['data_dir']!r}; "
                             "point data_dir at the folder that holds it: --set data_dir=PATH)")
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
    for name, entry in raw["stages"].items():
        if not isinstance(entry, dict) or entry.get("kind") not in RECIPES:
            raise ConfigError(f"{where}: stage {name!r} needs kind: one of {', '.join(RECIPES)}")
        extra = sorted(set(entry) - {"kind", "init", "data", "config"})
        if extra:
            raise ConfigError(f"{where}: stage {name!r}: unknown key {extra[0]!r}")
        spec = RECIPES[entry["kind"]]
        earlier = {s.name: s for s in stages}
        for ref in ("init", "data"):
            if entry.get(ref) and entry[ref] not in earlier:
                raise ConfigError(f"{where}: stage {name!r}: {ref} {entry[ref]!r} is not an earlier stage")
        if entry.get("init") and not earlier[entry["init"]].makes_model:
            raise ConfigError(f"{where}: stage {name!r}: init {entry['init']!r} produces no model")
        if entry.get("data") and (spec.dataset_field is None or earlier[entry["data"]].spec.product != "sft.jsonl"):
            raise ConfigError(f"{where}: stage {name!r}: data must name a rejection stage, for an sft stage")
        init_path = str(out / entry["init"] / "final") if entry.get("init") else None
        data_path = str(out / entry["data"] / "sft.jsonl") if entry.get("data") else None
        # each stage its own seed (recipe seed + stage index): the GRPO stages would otherwise draw the same
        # questions with the same sampling seeds at every step, and their curves would move together
        wired = _wire(spec, entry.get("config") or {}, recipe=raw, stage_dir=out / name, seed=raw["seed"] + len(stages),
                      init_path=init_path, data_path=data_path)
        config_cls, _ = spec.load()
        cfg = build(config_cls, wired, f"{where}: stages.{name}.config")
        stages.append(Stage(name, entry["kind"], entry.get("init"), entry.get("data"), cfg))
    evaluate = build(EvalSettings, raw.get("evaluate") or {}, f"{where}: evaluate")
    for s in evaluate.stages or []:
        if s not in [st.name for st in stages] + [BASE]:
            raise ConfigError(f"{where}: evaluate.stages names unknown stage {s!r}")
    return Recipe(out, raw["seed"], raw["model"], tasks, stages, evaluate, raw.get("name", path.stem))


DATA_DIR = "{data_dir}"


def fill_data_dir(node: Any, data_dir: Any, where: str, at: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """`node` with "{data_dir}" replaced in every string, and the (field, path) of each string filled."""
    if isinstance(node, dict):
        filled, found = {}, []
        for key, value in node.items():
            filled[key], more = fill_data_dir(value, data_dir, where, f"{at}.{key}" if at else str(key))
            found += more
        return filled, found
    if isinstance(node, list):
        pairs = [fill_data_dir(v, data_dir, where, f"{at}[{i}]") for i, v in enumerate(node)]
        return [v for v, _ in pairs], [f for _, more in pairs for f in more]
    if isinstance(node, str) and DATA_DIR in node:
        if not data_dir or not isinstance(data_dir, str):
            raise ConfigError(f"{where}: {at} uses {DATA_DIR} but the recipe sets no data_dir "
                              "(add data_dir: PATH, or --set data_dir=PATH)")
        text = node.replace(DATA_DIR, data_dir.rstrip("/"))
        return text, [(at, text)]
    return node, []


def _stage_overrides(raw: dict, overrides: dict) -> dict:
    """`--set r1_zero.loss.beta=0.1` means stages.r1_zero.config.loss.beta; top-level keys pass through."""
    stages = raw.get("stages") or {}
    out: dict = {}
    for key, value in overrides.items():
        if key in stages:
            out.setdefault("stages", {}).setdefault(key, {})["config"] = value
        else:
            out[key] = value
    return out
