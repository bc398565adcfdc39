"""The Python tool: a sandboxed, stateful interpreter the model calls while it reasons.

Format (ReTool's convention, Feng et al. 2025, "ReTool: Reinforcement Learning for Strategic Tool Use in LLMs"):
the model writes a cell

    <code>
    ```python
    x = 48 * 1234
    x
    ```
    </code>

and decoding pauses at `</code>`. The cell runs in the reply's interpreter and its output comes back as tokens the
model did not choose:

    <interpreter>
    59232
    </interpreter>

then decoding resumes in the same cache row. Output is what the cell printed, plus the value of a final bare
expression (as a REPL echoes it); an exception returns its last traceback line (`ZeroDivisionError: division by
zero`), so a failing cell is feedback to the model, never a crash. Markdown fences inside `<code>` are optional.

The interpreter (one `PythonSession` per reply) keeps variables across the reply's calls and starts fresh for the
next reply. It runs in r1kit's code sandbox (rewards/sandbox.py: bwrap namespaces, no network, rlimits) with a
wall-clock limit per call, a CPU budget for the whole session, a memory limit and an output cap. A call that
times out kills the interpreter; the next call gets a fresh one and is told so.

Left out: other languages, files that persist between replies, installing packages (the standard library only).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from r1kit.config import configclass
from r1kit.rewards.sandbox import (
    Limits,
    SandboxDied,
    SandboxError,
    SandboxProcess,
    SandboxTimeout,
    process_limit,
)

CODE_OPEN, CODE_CLOSE = "<code>", "</code>"
OUTPUT_OPEN, OUTPUT_CLOSE = "<interpreter>", "</interpreter>"
# The system message `r1kit generate/chat/serve --tools python` give a model (unless --system is set); models
# trained on the format (the tool recipe's cold start) need none.
TOOL_INSTRUCTIONS = (
    "You can run Python while you think. Write a cell as <code>\n```python\n...\n```\n</code> and its output "
    "comes back as <interpreter>\n...\n</interpreter>. Variables persist between your cells. Use it for "
    "arithmetic and checks, then give the final answer."
)
_FENCE = re.compile(r"^\s*```[ \t]*(?:python|py)?[ \t]*\n(.*?)\n?[ \t]*```\s*$", re.DOTALL)
_STARTUP_S = 10.0  # a cold sandbox start on a loaded machine


@configclass
class ToolConfig:
    """Limits of the Python tool (per call unless named per reply)."""

    timeout: float = 5.0  # wall-clock seconds per call
    max_calls: int = 4  # per reply; further calls are answered with an error, not run
    max_seconds: float = 20.0  # wall-clock seconds of tool time per reply
    memory_mb: int = 512
    max_output_chars: int = 512  # longer output is cut, with a note saying how much was dropped
    workers: int = 4  # tool calls run concurrently with decoding, at most this many at once


@dataclass
class ToolCall:
    """One call as the engine ran it."""

    code: str
    output: str  # what the model was shown between the interpreter tags
    seconds: float
    error: str | None = None  # the exception line, "timeout", or "limit" (not run); None when it ran cleanly


def code_of(text: str) -> str | None:
    """The code of the tool call `text` ends with (text ends with `</code>`, after optional whitespace), else None."""
    head = text.rstrip()
    if not head.endswith(CODE_CLOSE):
        return None
    start = head.rfind(CODE_OPEN, 0, len(head) - len(CODE_CLOSE))
    if start == -1:
        return None
    body = head[start + len(CODE_OPEN): len(head) - len(CODE_CLOSE)]
    fenced = _FENCE.match(body)
    return (fenced.group(1) if fenced else body).strip("\n")


def render_output(call: ToolCall, after: str) -> str:
    """The text inserted after a call; `after` is the reply so far (a newline is added when it does not end one)."""
    lead = "" if after.endswith("\n") else "\n"
    return f"{lead}{OUTPUT_OPEN}\n{call.output.rstrip()}\n{OUTPUT_CLOSE}\n"


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [{len(text) - limit} more characters]"


class PythonSession:
    """One reply's interpreter in the sandbox, started at its first call. Not thread-safe: one call at a time."""

    def __init__(self, config: ToolConfig | None = None):
        self.config = config or ToolConfig()
        self.box: SandboxProcess | None = None
        self.calls = 0
        self.seconds = 0.0
        self._restarted = False

    def run(self, code: str) -> ToolCall:
        cfg = self.config
        self.calls += 1
        if self.calls > cfg.max_calls:
            return ToolCall(code, f"Error: the limit of {cfg.max_calls} tool calls per reply is reached; "
                                  "answer without the tool.", 0.0, "limit")
        budget = min(cfg.timeout, cfg.max_seconds - self.seconds)
        if budget <= 0:
            return ToolCall(code, f"Error: the reply's {cfg.max_seconds:g} s of tool time are spent; answer "
                                  "without the tool.", 0.0, "limit")
        start = time.monotonic()
        note = ""
        if self._restarted:
            note, self._restarted = "(the interpreter was restarted: earlier variables are lost)\n", False
        try:
            self._start()
            self.box.send({"code": code})
            reply = self.box.recv(time.monotonic() + budget)
            error = reply.get("error")
            output = str(reply.get("output", "")) + (str(error) if error else "")
        except SandboxTimeout:
            self._kill()
            error = "timeout"
            output = f"TimeoutError: the call ran past {budget:g} s and was stopped"
        except (SandboxDied, SandboxError) as e:
            self._kill()
            error = "crashed"
            output = f"Error: the interpreter stopped ({e}); it will be restarted"
        seconds = time.monotonic() - start
        self.seconds += seconds
        return ToolCall(code, _cut(note + output, cfg.max_output_chars), seconds, error)

    def _start(self) -> None:
        if self.box is not None:
            return
        cfg = self.config
        # The CPU limit is the reply's whole tool budget: the interpreter lives across calls.
        limits = Limits(timeout=cfg.timeout, memory_mb=cfg.memory_mb, output_bytes=4 * cfg.max_output_chars + 1024)
        request = {"mode": "repl", "code": "", "timeout": cfg.timeout, "cpu_s": cfg.max_seconds + 1.0,
                   "memory_mb": cfg.memory_mb, "file_bytes": limits.file_bytes,
                   "output_bytes": limits.output_bytes, "nproc": process_limit(limits)}
        self.box = SandboxProcess(request, limits)
        try:
            self.box.recv(time.monotonic() + _STARTUP_S)  # {"ready": true}
        except (SandboxTimeout, SandboxDied) as e:
            self._kill()
            raise SandboxError(f"the Python tool's sandbox did not start: {e or 'timeout'}") from None

    def _kill(self) -> None:
        if self.box is not None:
            self.box.close()
            self.box = None
            self._restarted = self.calls > 0

    def close(self) -> None:
        self._kill()
        self._restarted = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tool_stats(calls_per_reply: list[list[ToolCall]], correct: list[float]) -> dict[str, float | None]:
    """Tool use of a set of replies: calls per reply, the error rate of calls, accuracy with and without a call."""
    n_calls = sum(len(c) for c in calls_per_reply)
    used = [ok for calls, ok in zip(calls_per_reply, correct) if calls]
    unused = [ok for calls, ok in zip(calls_per_reply, correct) if not calls]
    return {
        "tool_calls_per_reply": n_calls / max(len(calls_per_reply), 1),
        "tool_error_rate": sum(c.error is not None for cs in calls_per_reply for c in cs) / n_calls if n_calls else None,
        "accuracy_with_tool": sum(used) / len(used) if used else None,
        "accuracy_without_tool": sum(unused) / len(unused) if unused else None,
    }


def tool_output_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the tool output blocks in a reply: what the engine inserts after a cell (the newline
    before `<interpreter>` when the cell did not end one, through the newline after `</interpreter>`).

    SFT on tool-using traces masks these spans out of the loss, as RL does: the model is never trained to write
    what the interpreter returns."""
    spans, at = [], 0
    while (start := text.find(OUTPUT_OPEN, at)) != -1:
        end = text.find(OUTPUT_CLOSE, start)
        end = len(text) if end == -1 else end + len(OUTPUT_CLOSE)
        if text.startswith("\n", end):
            end += 1
        if start > 0 and text[start - 1] == "\n" and text[:start - 1].rstrip(" \t").endswith(CODE_CLOSE):
            start -= 1
        spans.append((start, end))
        at = end
    return spans
