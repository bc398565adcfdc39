"""Task examples for training loops: where questions come from, how they become prompts, how replies score.

Shared by GRPO, rejection sampling, SFT data building and the pipeline, so a task is prompted and graded the
same way everywhere. Questions come from r1kit's synthetic generators (`tasks`) or from a task dataset file
(`dataset`, loaded by `r1kit.data.load_task_dataset`).
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import NonNegativeInt, PositiveInt

from r1kit.config import configclass
from r1kit.errors import ConfigError


@configclass
class TaskData:
    tasks: list[str] = field(default_factory=lambda: ["addition"])  # synthetic task names
    level: PositiveInt = 2
    dataset: str | None = None  # a task dataset (JSONL/Parquet/CSV/hf:id) instead of synthetic tasks
    # the dataset's rows: r1kit's task layout (`r1kit.data.load_task_dataset`) or GSM8K's question/answer with a
    # worked solution ending "#### N" (`r1kit.data.gsm8k`: answer N, solution the steps without annotations)
    layout: Literal["task", "gsm8k"] = "task"
    num_train: PositiveInt = 2000
    num_test: NonNegativeInt = 200
    # a dataset's examples whose worked solution has at most this many steps (non-empty lines): a curriculum
    # of easier questions, for a model that solves too few of the full set for GRPO's groups to differ
    max_solution_steps: PositiveInt | None = None
    prompt_template: str = "{question}"
    system_prompt: str | None = None

    def __post_init__(self):
        from r1kit.data import TASKS

        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown and self.dataset is None:
            raise ConfigError(f"data.tasks: unknown task {unknown[0]!r} (known: {', '.join(sorted(TASKS))})")
        if "{question}" not in self.prompt_template:
            raise ConfigError("data.prompt_template must contain {question}")
        if self.max_solution_steps is not None and self.dataset is None:
            raise ConfigError("data.max_solution_steps filters a dataset's worked solutions; set data.dataset")


def load_examples(data: TaskData, split: str, seed: int) -> list[dict]:
    """Train or test examples; synthetic tasks are interleaved so every batch mixes them."""
    if data.dataset:
        from r1kit.data import load_task_dataset
        from r1kit.data.gsm8k import load_gsm8k

        rows = load_gsm8k(data.dataset) if data.layout == "gsm8k" else load_task_dataset(data.dataset, on_error="skip")
        cut = max(1, len(rows) - data.num_test)
        rows = rows[:cut] if split == "train" else rows[cut:]
        if data.max_solution_steps is not None and rows:
            rows = [ex for ex in rows if solution_steps(ex) <= data.max_solution_steps]
            if not rows:
                raise ConfigError(f"data.max_solution_steps={data.max_solution_steps} leaves no {split} example "
                                  f"of {data.dataset}")
        return rows
    from r1kit.data import make_task_set

    n = data.num_train if split == "train" else data.num_test
    per_task = [make_task_set(t, -(-n // len(data.tasks)), seed=seed, level=data.level, split=split, unique=False)
                for t in data.tasks]
    mixed = [ex for group in zip(*per_task) for ex in group]
    return mixed[:n]


def solution_steps(example: dict) -> int:
    """The number of steps (non-empty lines) of an example's worked solution."""
    solution = example.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        raise ConfigError(f"data.max_solution_steps: example {example.get('id')!r} has no worked solution")
    return sum(1 for line in solution.splitlines() if line.strip())


def example_messages(example: dict, data: TaskData) -> list[dict]:
    system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    # replace, not str.format: R1's template holds a literal "\\boxed{}" (as the evaluation's `render` reads it)
    return system + [{"role": "user", "content": data.prompt_template.replace("{question}", example["question"])}]


def score_completion(text: str, example: dict, weights: dict[str, float], *, prefilled_think: bool | None,
                     **facts) -> tuple[float, dict]:
    """Weighted reward of one reply and the per-function values (None = could not judge).

    `prefilled_think` (required: the engine knows it, `Engine.encode`) says the prompt opened the think block;
    every reward then reads the answer as `r1kit.reasoning` splits it, so a reply cut off inside its reasoning
    has no answer. `facts` are further per-completion values (completion_tokens, max_tokens).
    """
    from r1kit.rewards import combine_rewards

    return combine_rewards(text, {**example, **facts, "prefilled_think": prefilled_think}, weights)


def is_correct(text: str, example: dict, *, prefilled_think: bool | None) -> bool:
    """The accuracy reward is 1: the answer the reply commits to (prefill-aware) is right."""
    from r1kit.rewards import get_reward

    return (get_reward("accuracy")(text, **{**example, "prefilled_think": prefilled_think}) or 0.0) >= 1.0
