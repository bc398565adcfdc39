"""Chat datasets (for SFT) and task datasets (for RL and evaluation), normalized from any record file.

Sources are whatever `read_records` reads (JSONL, JSON, Parquet, CSV, `hf:owner/name[:split]`) or an
in-memory list of dicts. Column names come from a `FieldMap`, so a dataset with `problem`/`solution` columns
loads with `FieldMap(question="problem", answer="solution")`.

Chat rows hold either `messages` (role/content dicts; assistant turns may carry `reasoning`) or
`prompt`/`completion` (each a string or a list of messages; the row may carry `reasoning` for the
completion). They normalize to `{"messages": [{"role", "content"[, "reasoning"]}, ...]}`. An assistant reply
written as `<think>R</think>A` with no separate reasoning is split into reasoning R and content A.

Task rows hold `question` plus `answer` (math), `choices` + `answer` (multiple choice; the answer may be a
letter, a 0-based index or the choice text, and normalizes to the letter) or `tests` (code; a list of
{"input", "output"} cases or a string of assert-style test code, with an optional `entry_point`). They
normalize to the example layout of `r1kit.data.tasks`: {"id", "kind", "question", "answer" | "choices" |
"tests", ...}, other columns passed through (so a saved countdown set keeps `numbers` and `target`).

A row missing what it needs, or whose target is empty, is never kept: `on_error="fail"` raises an
R1kitError naming the source, the row index and the field; `on_error="skip"` drops it and logs how many
rows were dropped and why. Left out: streaming, multi-turn tool calls, images.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1kit.data.records import parse_hf_id, read_records
from r1kit.errors import R1kitError

log = logging.getLogger(__name__)

KINDS = ("math", "choice", "code")
ROLES = ("system", "user", "assistant")
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)


@dataclass(frozen=True)
class FieldMap:
    """Column names in the source; the defaults are the normalized names."""

    # chat
    messages: str = "messages"
    role: str = "role"
    content: str = "content"
    reasoning: str = "reasoning"
    prompt: str = "prompt"
    completion: str = "completion"
    system: str = "system"
    # tasks
    id: str = "id"
    question: str = "question"
    answer: str = "answer"
    choices: str = "choices"
    tests: str = "tests"
    entry_point: str = "entry_point"
    solution: str = "solution"


class RowError(R1kitError):
    """One row lacks what it needs; the message names the source, the row index and the field."""


# --- shared --------------------------------------------------------------------------------------------


def _records(src: str | os.PathLike | Sequence[dict]) -> tuple[str, list[dict]]:
    if isinstance(src, (str, os.PathLike)):
        return str(src), read_records(src)
    if isinstance(src, Sequence) and all(isinstance(r, dict) for r in src):
        return "<records>", list(src)
    raise R1kitError(f"expected a file path, an hf: id or a list of dicts, got {type(src).__name__}")


def _normalize_all(
    source: str, rows: list[dict], normalize: Callable[[dict, int], dict], on_error: str
) -> list[dict]:
    if on_error not in ("fail", "skip"):
        raise R1kitError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    out, skipped = [], []
    for i, row in enumerate(rows):
        try:
            out.append(normalize(row, i))
        except RowError as e:
            if on_error == "fail":
                raise RowError(f"{source} row {i}: {e}") from None
            skipped.append(f"row {i}: {e}")
    if skipped:
        shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        log.warning("%s: skipped %d of %d rows (%s)", source, len(skipped), len(rows), shown)
    return out


def _text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    if value is None:
        raise RowError(f"missing field {field!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"field {field!r} must be text, got {type(value).__name__}")
    text = str(value)
    if not allow_empty and not text.strip():
        raise RowError(f"field {field!r} is empty")
    return text


def _given(value: Any) -> bool:
    """A cell holds a value: not None and not the empty string a CSV file writes for a missing cell."""
    return value is not None and not (isinstance(value, str) and value == "")


def _maybe_json(value: Any) -> Any:
    """CSV cells hold lists and objects as JSON text; decode those, leave anything else alone."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# --- chat ----------------------------------------------------------------------------------------------


def _message(raw: Any, f: FieldMap, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise RowError(f"{where} must be an object with {f.role!r} and {f.content!r}")
    role = _ROLE_ALIASES.get(raw.get(f.role), raw.get(f.role))
    if role not in ROLES:
        raise RowError(f"{where} has role {raw.get(f.role)!r}; expected one of {ROLES}")
    content = _text(raw.get(f.content), f"{where}.{f.content}", allow_empty=role != "assistant")
    msg = {"role": role, "content": content}
    reasoning = raw.get(f.reasoning) if _given(raw.get(f.reasoning)) else None
    if role == "assistant":
        if reasoning is None and (m := _THINK.match(content)):
            reasoning, msg["content"] = m.group(1).strip(), m.group(2).strip()
            if not msg["content"]:
                raise RowError(f"{where} has reasoning but an empty answer after </think>")
        if reasoning is not None:
            msg["reasoning"] = _text(reasoning, f"{where}.{f.reasoning}", allow_empty=True)
    return msg


def _json_messages(text: str) -> list[dict] | None:
    """The list of messages a CSV cell holds as JSON text, or None when the text is plain."""
    decoded = _maybe_json(text)
    if isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded):
        return decoded
    return None


def _messages(raw: Any, f: FieldMap, field: str) -> list[dict[str, str]]:
    if isinstance(raw, str):
        if (decoded := _json_messages(raw)) is None:
            return [{"role": "user", "content": _text(raw, field)}]
        raw = decoded
    if not isinstance(raw, list) or not raw:
        raise RowError(f"field {field!r} must be a non-empty list of messages")
    return [_message(m, f, f"{field}[{j}]") for j, m in enumerate(raw)]


def _chat_row(row: dict, f: FieldMap) -> dict:
    if _given(row.get(f.messages)):
        messages = _messages(row[f.messages], f, f.messages)
    elif f.prompt in row or f.completion in row:
        if row.get(f.prompt) is None:
            raise RowError(f"missing field {f.prompt!r}")
        if row.get(f.completion) is None:
            raise RowError(f"missing field {f.completion!r}")
        messages, completion = _messages(row[f.prompt], f, f.prompt), row[f.completion]
        if isinstance(completion, str) and _json_messages(completion) is None:
            completion = [{f.role: "assistant", f.content: completion}]
        replies = _messages(completion, f, f.completion)
        if _given(row.get(f.reasoning)) and replies[-1]["role"] == "assistant":
            replies[-1]["reasoning"] = _text(row[f.reasoning], f.reasoning, allow_empty=True)
        messages += replies
        if row.get(f.system):
            messages.insert(0, {"role": "system", "content": _text(row[f.system], f.system)})
    else:
        raise RowError(f"needs {f.messages!r} or {f.prompt!r}/{f.completion!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("has no assistant message to train on")
    return {"messages": messages}


def load_chat_dataset(
    src: str | os.PathLike | Sequence[dict], *, fields: FieldMap | None = None, on_error: str = "fail"
) -> list[dict]:
    """Chat examples `{"messages": [{"role", "content"[, "reasoning"]}, ...]}`, one per valid row.

    Every kept row has at least one assistant message with non-empty content.
    """
    f = fields or FieldMap()
    source, rows = _records(src)
    return _normalize_all(source, rows, lambda row, i: _chat_row(row, f), on_error)


# --- tasks ---------------------------------------------------------------------------------------------


def _choices(raw: Any, field: str) -> list[str]:
    raw = _maybe_json(raw)
    if isinstance(raw, dict):  # {"A": "...", "B": "..."}
        raw = [raw[k] for k in sorted(raw)]
    if not isinstance(raw, list) or len(raw) < 2:
        raise RowError(f"field {field!r} must be a list of at least 2 choices")
    if len(raw) > len(string.ascii_uppercase):
        raise RowError(f"field {field!r} has {len(raw)} choices; at most 26 are supported")
    return [_text(c, f"{field}[{j}]") for j, c in enumerate(raw)]


def _choice_letter(answer: Any, choices: list[str], field: str) -> str:
    """The letter of the correct choice from a letter, the choice text, or a 0-based index."""
    letters = string.ascii_uppercase[: len(choices)]
    if isinstance(answer, str):
        text = answer.strip()
        if len(text) == 1 and text.upper() in letters:
            return text.upper()
        if text in choices:
            return letters[choices.index(text)]
        if text.isdigit():
            answer = int(text)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return letters[answer]
    raise RowError(f"field {field!r} = {answer!r} is not a letter in {letters}, a choice, or an index")


def _tests(raw: Any, field: str) -> list[dict[str, str]] | str:
    raw = _maybe_json(raw)
    if isinstance(raw, str):
        return _text(raw, field)
    if not isinstance(raw, list) or not raw:
        raise RowError(f"field {field!r} must be test code or a non-empty list of input/output cases")
    cases = []
    for j, case in enumerate(raw):
        if not isinstance(case, dict) or "input" not in case or "output" not in case:
            raise RowError(f"{field}[{j}] must be an object with 'input' and 'output'")
        cases.append({"input": str(case["input"]), "output": str(case["output"])})
    return cases


def _infer_kind(row: dict, f: FieldMap) -> str:
    if _given(row.get(f.tests)):
        return "code"
    if _given(row.get(f.choices)):
        return "choice"
    return "math"


def _task_row(row: dict, index: int, f: FieldMap, kind: str | None, stem: str) -> dict:
    k = kind or _infer_kind(row, f)
    mapped = {f.id, f.question, f.answer, f.choices, f.tests, f.entry_point, f.solution}
    out = {key: value for key, value in row.items() if key not in mapped}
    out["id"] = str(row[f.id]) if row.get(f.id) not in (None, "") else f"{stem}-{index}"
    out["kind"] = k
    out["question"] = _text(row.get(f.question), f.question)
    if k == "math":
        out["answer"] = _text(row.get(f.answer), f.answer)
    elif k == "choice":
        out["choices"] = _choices(row.get(f.choices), f.choices)
        if not _given(row.get(f.answer)):
            raise RowError(f"missing field {f.answer!r}")
        out["answer"] = _choice_letter(row[f.answer], out["choices"], f.answer)
    else:
        if not _given(row.get(f.tests)):
            raise RowError(f"missing field {f.tests!r}")
        out["tests"] = _tests(row[f.tests], f.tests)
        if row.get(f.entry_point):
            out["entry_point"] = _text(row[f.entry_point], f.entry_point)
    if row.get(f.solution):
        out["solution"] = _text(row[f.solution], f.solution)
    return out


def load_task_dataset(
    src: str | os.PathLike | Sequence[dict],
    *,
    fields: FieldMap | None = None,
    on_error: str = "fail",
    kind: str | None = None,
) -> list[dict]:
    """Task examples for RL and evaluation, one per valid row.

    Args:
        kind: "math", "choice" or "code" to require that kind's fields in every row; None infers it per row
            (`tests` -> code, else `choices` -> choice, else math).
    Returns:
        dicts with "id" (the row's, else "<file stem>-<index>"), "kind", "question", and "answer" (math:
        non-empty text; choice: a letter) + "choices", or "tests" (+ "entry_point"); "solution" when given;
        other columns unchanged.
    """
    if kind is not None and kind not in KINDS:
        raise R1kitError(f"kind must be one of {KINDS} or None, got {kind!r}")
    f = fields or FieldMap()
    source, rows = _records(src)
    if source.startswith("hf:"):
        stem = parse_hf_id(source)[0].replace("/", "_")
    else:
        stem = Path(source).name.split(".")[0] if source != "<records>" else "row"
    return _normalize_all(source, rows, lambda row, i: _task_row(row, i, f, kind, stem), on_error)
