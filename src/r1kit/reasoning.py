"""The R1 reply format: reasoning inside <think>...</think>, then the answer. Pure text, no dependencies.

Shared by generation (Completion.reasoning / .answer), rewards (answers are read after the last `</think>`),
serving and the chat command. Cases: the chat template prefilled `<think>` in the prompt (the reply starts
inside the block and only closes it); the model opens and closes the block itself; the block is never closed
(truncated: everything is reasoning, there is no answer); no block at all (everything is the answer).
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def prompt_opens_think(prompt: str) -> bool:
    """True when the prompt ends inside an open think block (R1-style templates prefill `<think>\\n`)."""
    _, sep, tail = prompt.rpartition(THINK_OPEN)
    return bool(sep) and THINK_CLOSE not in tail


def split_reasoning(text: str, prefilled: bool = False) -> tuple[str, str]:
    """(reasoning, answer) of a reply; `prefilled` says the prompt already opened the think block.

    The answer is what follows the last `</think>`; an unclosed block leaves the answer empty."""
    if THINK_CLOSE in text:
        reasoning, _, answer = text.rpartition(THINK_CLOSE)
        return reasoning.replace(THINK_OPEN, "").strip(), answer.strip()
    if prefilled:
        return text.strip(), ""
    _, sep, rest = text.partition(THINK_OPEN)
    if sep:
        return rest.strip(), ""
    return "", text.strip()


def has_answer(text: str, prefilled: bool = False) -> bool:
    """False when the reply is still inside an unclosed think block (its tail is reasoning, not an answer)."""
    return THINK_CLOSE in text or not (prefilled or THINK_OPEN in text)
