"""Incremental reasoning split: text deltas in, (reasoning_content, content) deltas out.

The streamed pieces concatenate to exactly what `r1kit.generation.split_reasoning` returns for the whole text
(both parts stripped of surrounding whitespace) in the cases a stream can decide as it goes:
- the prompt prefilled `<think>` (R1-style templates): everything up to `</think>` is reasoning, the rest answer;
- the reply opens with `<think>` (after optional whitespace): the block is reasoning, what follows it answer;
- neither: everything is the answer.
A tag split across deltas is held back until it is complete; trailing whitespace is held back until more text
follows it, so nothing is sent that the final split would strip.

Left out: a reply that is not prefilled and closes `</think>` without ever opening it, or opens `<think>` in the
middle of its text; a stream cannot take back what it already sent as content, so those stay content here
(the non-streamed response uses `split_reasoning` and treats them as reasoning).
"""

from __future__ import annotations

from r1kit.reasoning import THINK_CLOSE, THINK_OPEN

_START, _REASONING, _CONTENT = "start", "reasoning", "content"


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    return next((k for k in range(len(tag) - 1, 0, -1) if text.endswith(tag[:k])), 0)


class ReasoningStream:
    """Feed text deltas with `feed`; each call returns (reasoning_delta, content_delta). Call `finish` at the end."""

    def __init__(self, prefilled: bool):
        self.state = _REASONING if prefilled else _START
        self.buffer = ""  # text received but not yet classified or sent
        self.started = {_REASONING: False, _CONTENT: False}  # has the part sent non-whitespace text yet
        self.held = {_REASONING: "", _CONTENT: ""}  # trailing whitespace not sent yet

    def feed(self, delta: str) -> tuple[str, str]:
        self.buffer += delta
        out = {_REASONING: "", _CONTENT: ""}
        while self.buffer:
            if self.state == _START:
                head = self.buffer.lstrip()
                if THINK_OPEN.startswith(head):  # may still become the opening tag: wait for more
                    return out[_REASONING], out[_CONTENT]
                if head.startswith(THINK_OPEN):
                    self.state, self.buffer = _REASONING, head[len(THINK_OPEN):]
                else:
                    self.state = _CONTENT
                continue
            if self.state == _REASONING:
                i = self.buffer.find(THINK_CLOSE)
                if i != -1:
                    out[_REASONING] += self._emit(_REASONING, self.buffer[:i], final=True)
                    self.state, self.buffer = _CONTENT, self.buffer[i + len(THINK_CLOSE):]
                    continue
                keep = _partial_tag_suffix(self.buffer, THINK_CLOSE)
                out[_REASONING] += self._emit(_REASONING, self.buffer[: len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep:]
                break
            out[_CONTENT] += self._emit(_CONTENT, self.buffer)
            self.buffer = ""
        return out[_REASONING], out[_CONTENT]

    def finish(self) -> tuple[str, str]:
        """Flush at the end of the reply: an unfinished tag prefix is plain text of the current part."""
        if self.state == _START:
            self.state = _CONTENT
        part, self.buffer = self.buffer, ""
        text = self._emit(self.state, part, final=True)
        return (text, "") if self.state == _REASONING else ("", text)

    def _emit(self, part: str, text: str, final: bool = False) -> str:
        """Text of `part` that is safe to send: leading whitespace of the part dropped, trailing held back."""
        text = self.held[part] + text
        if not self.started[part]:
            text = text.lstrip()
        body = text.rstrip()
        self.held[part] = "" if final else text[len(body):]
        if body:
            self.started[part] = True
        return body
