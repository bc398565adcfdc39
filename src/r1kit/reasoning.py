"""The R1 reply format: reasoning inside <think>...</think>, then the answer. Pure text, no dependencies.

This module is the one place that reads the format; generation (Completion.reasoning / .answer), rewards,
evaluation grading, serving (streamed `reasoning_content`) and the chat command all go through it.

The rules, with `prefilled` meaning the prompt ended inside an open think block (R1 templates prefill it):
- the reply is inside a think block from its start when `prefilled`, or when it opens with `<think>` (after
  optional whitespace);
- the FIRST `</think>` ends the reasoning; everything after it is the answer, further tags included (a
  double-closed reply answers with "b</think>c"; it fails the format check). First, not last, so a stream can
  send content as soon as the block closes, and both agree (vLLM's R1 parser reads it the same way);
- a reply still inside its block at the end (truncated, or never closed) has NO answer: its tail is
  unfinished reasoning, and a `\\boxed{}` written there must never count;
- a reply that never opened a block is all answer.

Lenient cases of the whole-text split, which a stream cannot follow (it cannot take back content it sent):
a `</think>` in a reply that is not prefilled and did not open with `<think>` (a template prefilled the tag
but it was not detected) still ends the reasoning there; a `<think>` opened mid-reply and never closed
leaves no answer. `ReasoningStream` sends those replies as content.

Left out: other reasoning delimiters than `<think>`, and replies that interleave several think blocks with
answer text (after the first `</think>` everything is answer).
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def prompt_opens_think(prompt: str) -> bool:
    """True when the prompt ends inside an open think block (R1-style templates prefill `<think>\\n`)."""
    _, sep, tail = prompt.rpartition(THINK_OPEN)
    return bool(sep) and THINK_CLOSE not in tail


def _opens_itself(text: str) -> bool:
    return text.lstrip().startswith(THINK_OPEN)


def split_reply(text: str, prefilled: bool = False) -> tuple[str, str | None]:
    """(reasoning, answer) of a reply, both stripped; answer None when the reply ends inside a think block."""
    if not prefilled and _opens_itself(text):
        text, prefilled = text.lstrip()[len(THINK_OPEN):], True
    reasoning, closed, answer = text.partition(THINK_CLOSE)
    if closed:
        if not prefilled:  # lenient: an undetected prefill, or a block opened mid-reply
            reasoning = reasoning.replace(THINK_OPEN, "")
        return reasoning.strip(), answer.strip()
    if prefilled:
        return text.strip(), None
    _, opened, rest = text.partition(THINK_OPEN)
    if opened:  # a block opened mid-reply and never closed
        return rest.strip(), None
    return "", text.strip()


def split_reasoning(text: str, prefilled: bool = False) -> tuple[str, str]:
    """(reasoning, answer) as `Completion` carries them: the answer is "" when there is none."""
    reasoning, answer = split_reply(text, prefilled)
    return reasoning, answer or ""


def answer_part(text: str, prefilled: bool | None = False) -> str | None:
    """The part of a reply that may hold its answer, or None when the reply never left its think block.

    `prefilled` None (not known) reads the reply as not prefilled; a closed block is still found by the
    lenient rule, but a truncated prefilled reply then looks like an answer: callers that know must say."""
    return split_reply(text, bool(prefilled))[1]


def has_answer(text: str, prefilled: bool = False) -> bool:
    """False when the reply is still inside an unclosed think block (its tail is reasoning, not an answer)."""
    return split_reply(text, prefilled)[1] is not None


def is_well_formed(text: str, prefilled: bool | None = None) -> bool:
    """The format R1 rewards: one think block, opened by the prompt or first in the reply, closed once, with
    non-empty reasoning, then a non-empty answer. `prefilled` None infers it (no `<think>` in the reply)."""
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if prefilled is None:
        prefilled = opens == 0
    expected_opens = 0 if prefilled else 1
    if closes != 1 or opens != expected_opens or not (prefilled or _opens_itself(text)):
        return False
    reasoning, answer = split_reply(text, prefilled)
    return bool(reasoning) and bool(answer)


# ---- incremental parsing ---------------------------------------------------------------------------------

_START, _REASONING, _CONTENT = "start", "reasoning", "content"


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    return next((k for k in range(len(tag) - 1, 0, -1) if text.endswith(tag[:k])), 0)


class ReasoningStream:
    """`split_reply` for text that arrives in pieces: feed deltas, get (reasoning_delta, content_delta).

    The pieces concatenate to `split_reasoning(whole_text, prefilled)` for every reply except the two lenient
    cases in the module docstring. A tag split across deltas is held back until it is complete; trailing
    whitespace is held back until more text follows it, so nothing is sent that the whole-text split strips.
    Call `finish` once at the end.
    """

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
                if head.startswith(THINK_OPEN):
                    self.state, self.buffer = _REASONING, head[len(THINK_OPEN):]
                elif THINK_OPEN.startswith(head):  # may still become the opening tag: wait for more
                    return out[_REASONING], out[_CONTENT]
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
