"""Format reward: exactly one ``<think> ... </think>`` block, then a non-empty answer.

A chat template may end the prompt with ``<think>`` (DeepSeek-R1 distills do), so the completion starts
inside the block and contains only ``</think>``. That is detected (no ``<think>`` but one ``</think>``) or
stated with ``prefilled_think=True``; either way it earns full reward.

Left out: checking the answer's own formatting (boxed or not); that belongs to `accuracy`.
"""

from __future__ import annotations

from r1kit.reasoning import THINK_CLOSE, THINK_OPEN


def format_reward(completion: str, prefilled_think: bool | None = None, **_: object) -> float:
    """1.0 for ``[<think>] reasoning </think> answer`` with non-empty reasoning and answer, else 0.0.

    `prefilled_think`: True when the prompt already ended with ``<think>``; None detects it.
    """
    opens, closes = completion.count(THINK_OPEN), completion.count(THINK_CLOSE)
    if closes != 1:
        return 0.0
    if prefilled_think is None:
        prefilled_think = opens == 0
    if prefilled_think:
        if opens != 0:
            return 0.0
        reasoning, answer = completion.split(THINK_CLOSE)
    else:
        head, _, rest = completion.partition(THINK_OPEN)
        if opens != 1 or head.strip() or THINK_CLOSE not in rest:
            return 0.0
        reasoning, answer = rest.split(THINK_CLOSE)
    return 1.0 if reasoning.strip() and answer.strip() else 0.0
