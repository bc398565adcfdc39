"""A raw-text pretraining corpus built from the synthetic tasks.

Each document is one worked example (question, step-by-step solution, answer) written in one of a few plain
text layouts, so a toy model pretrained on it learns the arithmetic facts and the habit of working before
answering, without learning any one chat template. Only the *train* split of each task is used, so the
held-out test questions of `make_task_set(..., split="test")` never appear in pretraining.

Left out: natural-language filler text, documents longer than one example (the pretraining loop packs
documents itself), and de-duplication (repeats of easy facts are harmless and the instance spaces of
level 1 are small).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from r1kit.data.tasks import MAX_LEVEL, TASKS, get_task, sample_example
from r1kit.errors import R1kitError

LAYOUTS: dict[str, str] = {
    "qa": "Q: {question}\nA: {solution}\nAnswer: {answer}",
    "question": "Question: {question}\nReasoning: {solution}\nThe answer is {answer}.",
    "plain": "{question}\n{solution}\n{answer}",
    # The R1-Zero style with reasoning in tags; not a default so the base model's format is learned in RL.
    "think": "{question}\n<think>{solution}</think>\n<answer>{answer}</answer>",
}
DEFAULT_LAYOUTS = ("qa", "question", "plain")


def format_document(example: dict, layout: str) -> str:
    """Write one example in the named layout."""
    if layout not in LAYOUTS:
        raise R1kitError(f"unknown corpus layout {layout!r}; available: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout].format(**example)


def synthetic_corpus(
    n_docs: int,
    *,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    level: int | Sequence[int] = (1, 2),
    layouts: Sequence[str] = DEFAULT_LAYOUTS,
) -> list[str]:
    """`n_docs` documents, each one train-split example of a task drawn uniformly from `tasks` (default: all),
    at a level drawn uniformly from `level`, in a layout drawn uniformly from `layouts`. Deterministic in
    its arguments.
    """
    names = list(tasks) if tasks is not None else list(TASKS)
    levels = [level] if isinstance(level, int) else list(level)
    if not names or not levels or not layouts:
        raise R1kitError("synthetic_corpus needs at least one task, one level and one layout")
    chosen = [get_task(name) for name in names]
    for lv in levels:
        if not isinstance(lv, int) or not 1 <= lv <= MAX_LEVEL:
            raise R1kitError(f"corpus level must be an integer from 1 to {MAX_LEVEL}, got {lv!r}")
    for layout in layouts:
        if layout not in LAYOUTS:
            raise R1kitError(f"unknown corpus layout {layout!r}; available: {', '.join(LAYOUTS)}")
    rng = random.Random(f"corpus:{seed}")
    docs = []
    for _ in range(n_docs):
        task, lv, layout = rng.choice(chosen), rng.choice(levels), rng.choice(list(layouts))
        docs.append(format_document(sample_example(task, rng, lv, "train"), layout))
    return docs
