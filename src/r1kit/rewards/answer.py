"""Finding the final answer in a model reply: `split_reasoning`, `extract_answer`, `extract_choice`.

Answers are read only from the part after the last ``</think>``; a reply that opened a think block and never
closed it has no answer (its "answer" would be reasoning). Hack resistance lives here: several *different*
boxed answers, or an empty box, yield None.

Left out: answers without any marker (no box, no "answer is"): we do not guess the last number.
"""

from __future__ import annotations

import re

from r1kit import reasoning

_FINAL_PATTERNS = [
    re.compile(r"\*\*\s*final answer\s*:?\s*\*\*\s*:?\s*(.+)", re.IGNORECASE | re.DOTALL),
    re.compile(r"final answer\s*(?:is)?\s*[:：]?\s*(.+)", re.IGNORECASE | re.DOTALL),
    re.compile(r"the answer is\s*[:：]?\s*(.+)", re.IGNORECASE | re.DOTALL),
    re.compile(r"(?:^|\n)\s*\**answer\**\s*[:：]\s*(.+)", re.IGNORECASE | re.DOTALL),
]


def split_reasoning(text: str) -> tuple[str, str | None]:
    """(reasoning, answer part). The answer part is None when a think block was opened but never closed.

    Works whether or not ``<think>`` itself is in the text (a chat template may have prefilled it).
    """
    thought, answer = reasoning.split_reasoning(text)
    return thought, answer if reasoning.has_answer(text) else None


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), and of ``\\boxed 5``, in order."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text):
        if m.group(1) is None:  # \boxed 5: up to the next space or $
            tail = re.match(r"\s*([^\s$]+)", text[m.end():])
            if tail:
                out.append(tail.group(1))
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end():i - 1])
    return out


def _clean(ans: str) -> str:
    ans = ans.strip().split("\n")[0].strip()  # the first line after the marker
    ans = ans.strip("$ ").strip()
    ans = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", ans).strip()
    return ans.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer of a reply, from the part after ``</think>``; None when there is none or it is ambiguous.

    Order: boxed answers (all must agree; the last is returned), then "**Final Answer**", "final answer is",
    "the answer is", "Answer:" (the last occurrence wins).
    """
    _, answer = split_reasoning(text)
    if not answer or not answer.strip():
        return None
    boxes = boxed_contents(answer)
    if boxes:
        normalized = {re.sub(r"\s+", "", b) for b in boxes}
        if len(normalized) > 1 or normalized == {""}:
            return None
        return boxes[-1].strip()
    for pattern in _FINAL_PATTERNS:
        matches = list(pattern.finditer(answer))
        if matches:
            found = _clean(matches[-1].group(1))
            inner = boxed_contents(found)
            found = inner[-1].strip() if inner else found
            return found or None
    return None


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    """A multiple-choice letter ('A'..) from the answer part, or None when absent or hedged (several letters)."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_choices]
    _, answer = split_reasoning(text)
    if not answer:
        return None
    cand = extract_answer(text)
    if cand is None:
        lines = [ln for ln in answer.strip().splitlines() if ln.strip()]
        if not lines:
            return None
        cand = lines[-1]
    cand = re.sub(r"\\text(?:bf)?\{([^}]*)\}", r"\1", cand).strip().strip("*$ ")
    whole = re.fullmatch(r"(?:option\s*)?\(?([A-Za-z])\)?[.:)]?", cand, flags=re.IGNORECASE)
    if whole and whole.group(1).upper() in letters:
        return whole.group(1).upper()
    found = set(re.findall(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", cand))
    return found.pop() if len(found) == 1 else None
