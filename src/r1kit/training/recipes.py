"""The table of training recipes: one row per recipe, read by the CLI, the pipeline and the recipe loader.

A row says where the recipe's config class and run function live, its subcommand and help, and how a
pipeline stage of that kind is connected to the stages before it (which config field takes the model it
starts from, which takes the recipe's task definition, what it leaves behind). Adding a recipe is adding a
row; nothing else switches on the kind. Modules are imported when a row is used, so `r1kit --help` stays fast,
and a module that fails to import is an error, never a silently absent subcommand.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RecipeSpec:
    kind: str  # the pipeline stage kind
    command: str  # the `r1kit` subcommand
    module: str  # defines the config class, the run function and optionally `summarize(cfg, result) -> str`
    config: str
    run: str  # run(config) -> dict, the last metrics or a summary
    help: str
    description: str
    example: str = "--set optim.lr=3e-4"
    model_field: str = "model"  # the field a stage's starting model goes into (distill: the teacher)
    tasks_field: str | None = "tasks"  # the field the pipeline's task definition is merged into
    dataset_field: str | None = None  # the nested field that takes an earlier rejection stage's dataset
    product: str = "final"  # what a stage leaves in its directory: "final" (an HF model dir) or a file

    @property
    def makes_model(self) -> bool:
        return self.product == "final"

    def load(self) -> tuple[type, Callable[[object], dict]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.run)

    def summarize(self, cfg, result: dict) -> str:
        module = importlib.import_module(self.module)
        if hasattr(module, "summarize"):
            return module.summarize(cfg, result)
        return f"done: {cfg.run.output_dir} (final model in {cfg.run.output_dir}/final)"


_RESUMES = "Re-running the same command resumes from the last checkpoint in run.output_dir."

RECIPES: dict[str, RecipeSpec] = {r.kind: r for r in [
    RecipeSpec("pretrain", "pretrain", "r1kit.training.pretrain", "PretrainConfig", "pretrain",
           help="causal-LM pretraining (synthetic corpus or a text file)",
           description=f"Pretrain from a YAML config. {_RESUMES}", tasks_field=None),
    RecipeSpec("sft", "sft", "r1kit.training.sft", "SFTConfig", "sft",
           help="supervised fine-tuning on chat data (loss on the final assistant turn)",
           description="SFT from a YAML config; without data.dataset it trains on the synthetic tasks' worked "
                       f"solutions (cold start). {_RESUMES}",
           example="--set optim.lr=3e-4 --set batch.packing=false", dataset_field="data"),
    RecipeSpec("grpo", "grpo", "r1kit.training.grpo", "GRPOConfig", "train",
           help="GRPO reinforcement learning with verifiable rewards",
           description=f"Run GRPO from a YAML config. {_RESUMES}",
           example="--set loss.beta=0.04 --set optim.lr=1e-5", tasks_field="data"),
    RecipeSpec("ppo", "ppo", "r1kit.training.ppo", "PPOConfig", "train",
           help="PPO with a critic (GAE, value clipping): GRPO's rollouts and rewards, the baseline it replaced",
           description=f"Run PPO from a YAML config (GRPO's fields plus value_model, value_optim, vf_clip, gamma, "
                       f"lam, whiten_advantages, kl_coef). {_RESUMES}",
           example="--set value_optim.lr=1e-5 --set lam=0.95", tasks_field="data"),
    RecipeSpec("rejection", "rejection-sample", "r1kit.training.rejection", "RejectionConfig", "rejection_sample",
           help="sample, verify and filter replies into an SFT dataset",
           description="Sample k replies per task prompt, keep verified ones (R1 filters), write a chat JSONL for "
                       "`r1kit sft` and a summary of kept/rejected counts.",
           example="--set sampling.samples_per_prompt=8", product="sft.jsonl"),
    RecipeSpec("distill", "distill", "r1kit.training.distill", "DistillConfig", "distill",
           help="distil a teacher's verified traces into a dense student",
           description="Teacher (model or trace JSONL) -> verified traces -> SFT of a dense student (optional "
                       f"logit KD). {_RESUMES}",
           example="--set student_overrides.dim=64 --set kd.weight=0.5", model_field="teacher"),
]}
