"""Format reward: exactly one ``<think> ... </think>`` block, then a non-empty answer.

The format itself is defined in `r1kit.reasoning.is_well_formed`. A chat template may end the prompt with
``<think>`` (DeepSeek-R1 distills do), so the completion starts inside the block and contains only
``</think>``. That is stated with ``prefilled_think=True`` or, when not given, detected (no ``<think>`` but one
``</think>``); either way it earns full reward.

Left out: checking the answer's own formatting (boxed or not); that belongs to `accuracy`.
"""

from __future__ import annotations

from r1kit.reasoning import is_well_formed


def format_reward(completion: str, prefilled_think: bool | None = None, **_: object) -> float:
    """1.0 for ``[<think>] reasoning </think> answer`` with non-empty reasoning and answer, else 0.0.

    `prefilled_think`: True when the prompt already ended with ``<think>``; None detects it.
    """
    return 1.0 if is_well_formed(completion, prefilled_think) else 0.0
