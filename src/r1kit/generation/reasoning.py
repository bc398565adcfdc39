"""Split a model reply into reasoning (inside <think>...</think>) and answer (after it).

Cases handled: the chat template prefilled `<think>` in the prompt (the reply starts inside the block and only
closes it); the model opens and closes the block itself; the block is never closed (truncated: everything is
reasoning, the answer is empty); no block at all (everything is the answer).
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def prompt_opens_think(prompt: str) -> bool:
    """True when the prompt ends inside an open think block (R1-style templates prefill `<think>\\n`)."""
    _, sep, tail = prompt.rpartition(THINK_OPEN)
    return bool(sep) and THINK_CLOSE not in tail


def split_reasoning(text: str, prefilled: bool = False) -> tuple[str, str]:
    """Return (reasoning, answer) of a reply; `prefilled` says the prompt already opened the think block."""
    if not prefilled:
        start = text.find(THINK_OPEN)
        if start == -1:
            if THINK_CLOSE not in text:
                return "", text.strip()
            start_body = 0  # a closing tag alone: the model treats the reply as starting inside the block
        else:
            start_body = start + len(THINK_OPEN)
        text = text[start_body:]
    reasoning, sep, answer = text.partition(THINK_CLOSE)
    if not sep:
        return reasoning.strip(), ""
    return reasoning.strip(), answer.strip()
