"""Finding the final answer in a model reply: `extract_answer`, `extract_choice`, and their `*_in` forms.

The reply is split by `r1kit.reasoning` (prefill-aware): only its answer part is searched, and a reply that
never left its think block has no answer. The `*_in` functions take an answer part that is already split
(`Completion.answer`); `extract_*` take a whole reply and `prefilled_think`. Hack resistance lives here:
several *different* boxed answers, or an empty box, yield None.

Left out: answers without any marker (no box, no "answer is"): we do not guess the last number.
"""

from __future__ import annotations

import re

from r1kit.reasoning import answer_part
from r1kit.reasoning import split_reply as split_reasoning  # noqa: F401  (the public name in r1kit.rewards)

# Markers of a stated final answer, strongest first; the answer is the text after the last occurrence.
# Every pattern here runs in linear time on any reply: no two adjacent unbounded runs that can share characters
# (a `\s+` before a word, tried at every space of a long blank run, made "12" + 20k spaces take minutes).
_MARKERS = [
    re.compile(r"\*\*\s*final answer\s*:?\s*\*\*\s*:?", re.IGNORECASE),
    re.compile(r"final answer\s*(?:is)?\s*[:：]?", re.IGNORECASE),
    re.compile(r"the answer is\s*[:：]?", re.IGNORECASE),
    re.compile(r"^[ \t]*\**answer\**[ \t]*[:：]", re.IGNORECASE | re.MULTILINE),
]
# Where a stated answer ends and its justification begins: a sentence end, or a connective word.
_EXPLANATION = re.compile(
    r"\.(?:\s|$)|[,;]?\s(?:because|since|as|so|thus|hence|therefore|which|where|given|due to|from|by)\b",
    re.IGNORECASE)
# Math delimiters ($, \( \), \[ \]) are dropped one by one (pairing them backtracks quadratically on a reply full
# of unmatched openers); a `\\` row break and an escaped `\$` are read first so they are kept whole.
_MATH_DELIMITER = re.compile(r"\\\\|\\\$|\$|\\[()\[\]]")


_BOX = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")
_BARE_BOX = re.compile(r"\s*([^\s$]+)")  # \boxed 5: up to the next space or $


def _matching_braces(text: str) -> dict[int, int]:
    """Index of the matching `}` for every `{` that has one, in one pass (unclosed boxes cost no rescans)."""
    match, stack = {}, []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), and of ``\\boxed 5``, in order."""
    out, match = [], None
    for m in _BOX.finditer(text):
        if m.group(1) is None:
            tail = _BARE_BOX.match(text, m.end())
            if tail:
                out.append(tail.group(1))
            continue
        match = _matching_braces(text) if match is None else match
        close = match.get(m.start(1))
        if close is not None:
            out.append(text[m.end():close])
    return out


def stated_answer(tail: str) -> str:
    """The answer that opens `tail` (the text after a marker such as "the answer is"), justification cut.

    "12 because 3 * 4 = 12" -> "12"; "$x = 5$, since ..." -> "x = 5"; "$3$ or $4$" stays a hedge, "3 or 4".
    """
    line = tail.strip().split("\n")[0].strip()
    line = _MATH_DELIMITER.sub(lambda m: m.group() if m.group() in ("\\\\", "\\$") else "", line)
    cut = _EXPLANATION.search(line)
    line = line[: cut.start()] if cut else line
    return line.strip().strip("$ ").strip().rstrip(".,;:").strip()


def answer_in(part: str | None) -> str | None:
    """The final answer stated in an answer part (None: no part, no marker, or an ambiguous answer).

    Order: boxed answers (all must agree; the last is returned), then "**Final Answer**", "final answer is",
    "the answer is", "Answer:" (the last occurrence of the first marker found wins).
    """
    if not part or not part.strip():
        return None
    boxes = boxed_contents(part)
    if boxes:
        normalized = {re.sub(r"\s+", "", b) for b in boxes}
        if len(normalized) > 1 or normalized == {""}:
            return None
        return boxes[-1].strip()
    for marker in _MARKERS:
        last = None
        for last in marker.finditer(part):
            pass
        if last is not None:
            found = stated_answer(part[last.end():])
            inner = boxed_contents(found)
            found = inner[-1].strip() if inner else found
            return found or None
    return None


def extract_answer(text: str, prefilled_think: bool | None = False) -> str | None:
    """The final answer of a whole reply, read from its answer part (see `answer_in`); None when there is none.

    `prefilled_think`: the prompt opened the think block, so a reply that never closes it has no answer."""
    return answer_in(answer_part(text, prefilled_think))


def choice_in(part: str | None, n_choices: int = 4) -> str | None:
    """A multiple-choice letter ('A'..) from an answer part, or None when absent or hedged (several letters)."""
    if not part:
        return None
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_choices]
    cand = answer_in(part)
    if cand is None:
        lines = [ln for ln in part.strip().splitlines() if ln.strip()]
        if not lines:
            return None
        cand = lines[-1]
    cand = re.sub(r"\\text(?:bf)?\{([^}]*)\}", r"\1", cand).strip().strip("*$ ")
    whole = re.fullmatch(r"(?:option\s*)?\(?([A-Za-z])\)?[.:)]?", cand, flags=re.IGNORECASE)
    if whole and whole.group(1).upper() in letters:
        return whole.group(1).upper()
    found = set(re.findall(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", cand))
    return found.pop() if len(found) == 1 else None


def extract_choice(text: str, n_choices: int = 4, prefilled_think: bool | None = False) -> str | None:
    """A multiple-choice letter from a whole reply's answer part (see `choice_in`)."""
    return choice_in(answer_part(text, prefilled_think), n_choices)
