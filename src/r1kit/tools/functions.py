"""OpenAI function calling in the Hermes / Qwen2.5 format: tools listed in the system text, calls in <tool_call> tags.

The format is Qwen2.5's chat template (Hermes models share it), so models trained on it call tools out of the box:
- the offered tools go into the system text after its content: a `# Tools` section listing one JSON object per tool
  between `<tools>` tags, then the instruction to call a function as
  `<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>`;
- an assistant turn that called tools renders its calls as those blocks, after its text, one per line;
- a tool's result renders as `<tool_response>\\n{content}\\n</tool_response>` in a user turn; consecutive results
  share one turn, one block per line.

Reading a reply: a `<tool_call>` block in the ANSWER (the part after `</think>`, as r1kit.reasoning splits it) is a
call when it holds a JSON object whose "name" is an offered function and whose "arguments" is a JSON object. Any
other block (bad JSON, unknown name, arguments that are not an object, a block never closed) stays in the content
verbatim: a malformed call is the model's text, never an error. The content is the text outside the calls, stripped.

Templates that know tools (Qwen2.5's, r1kit's toy R1_STYLE_TEMPLATE) render them natively through
`apply_chat_template(tools=...)`; for any other template `plain_messages` writes the same text into ordinary
system/user/assistant messages, so every model can be offered tools.

Left out: constrained decoding (tool_choice "required" or a named function, strict schemas), checking arguments
against the function's JSON Schema, other call formats (Llama-3 JSON, Mistral's [TOOL_CALLS], DeepSeek's own tokens).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"

# Qwen2.5's text, word for word (r1kit's R1_STYLE_TEMPLATE renders the same; a test holds them equal)
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n"
                "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


# ---- writing the prompt -------------------------------------------------------------------------------------------

def tools_system_text(tools: list[dict]) -> str:
    """The `# Tools` section for OpenAI-format tools ({"type": "function", "function": {...}}), as Qwen2.5 writes it
    (one `json.dumps` per tool, which is what the template's `tojson` does in transformers)."""
    return TOOLS_HEADER + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_FOOTER


def tool_call_block(name: str, arguments: dict | str) -> str:
    """One call as the model writes it; `arguments` is an object, or a JSON string sent back verbatim."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": {args}}}\n{TOOL_CALL_CLOSE}'


def tool_response_block(content: str) -> str:
    return f"{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}"


def template_renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template reads `tools` (then it also renders tool calls and tool messages)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates: transformers picks "tool_use" when tools are given
        return "tool_use" in template or any("tools" in t for t in template.values())
    return "tools" in template


def plain_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Chat messages (transformers' tool format) rewritten so a template that knows no tools renders the same text:
    the tools section joins the system message (or becomes one), assistant calls become `<tool_call>` blocks after
    the content, and each run of tool messages becomes one user message of `<tool_response>` blocks."""
    out: list[dict] = []
    if tools:
        section = tools_system_text(tools)
        if messages and messages[0]["role"] == "system":
            section = f"{messages[0]['content']}\n\n{section}"
            messages = messages[1:]
        out.append({"role": "system", "content": section})
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            block = tool_response_block(m["content"])
            if i and messages[i - 1]["role"] == "tool":
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = [tool_call_block(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            text = "\n".join(([m["content"]] if m.get("content") else []) + calls)
            out.append({**{k: v for k, v in m.items() if k != "tool_calls"}, "content": text})
        else:
            out.append(m)
    return out


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None) -> str:
    """The generation prompt for `messages` with `tools` offered (None: none), natively when the template can."""
    from r1kit.tokenizer import apply_chat_template

    if template_renders_tools(tokenizer):
        return apply_chat_template(tokenizer, messages, tools=tools or None)
    return apply_chat_template(tokenizer, plain_messages(messages, tools))


# ---- reading the reply --------------------------------------------------------------------------------------------

@dataclass
class FunctionCall:
    """A call the model made, in OpenAI's terms."""

    name: str
    arguments: str  # a JSON object, serialized (OpenAI sends arguments as a string)
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def read_call(body: str, names: set[str]) -> FunctionCall | None:
    """The call in the text between `<tool_call>` tags, or None when it is not a well-formed call of a known name."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names or not isinstance(obj.get("arguments"), dict):
        return None
    return FunctionCall(obj["name"], json.dumps(obj["arguments"], ensure_ascii=False))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    return next((k for k in range(len(tag) - 1, 0, -1) if text.endswith(tag[:k])), 0)


class ToolCallStream:
    """Splits answer text that arrives in pieces into content and calls: `feed` and `finish` return a list of
    content strings and `FunctionCall`s, in order.

    Text that may be the start of a `<tool_call>` block is held back until the block closes (then it is a call,
    or its verbatim text when malformed) or the reply ends (an unclosed block is content). Content is stripped as
    a whole: leading whitespace is dropped and trailing whitespace held until more content follows, so the pieces
    concatenate to `parse_tool_calls`'s content.
    """

    def __init__(self, names: set[str]):
        self.names = names
        self.buffer = ""  # text not yet classified
        self.in_call = False  # the buffer is the body of an open <tool_call> block
        self.started, self.held = False, ""  # content sent yet; its trailing whitespace not sent yet

    def feed(self, delta: str) -> list[str | FunctionCall]:
        self.buffer += delta
        out: list[str | FunctionCall] = []
        while True:
            if self.in_call:
                end = self.buffer.find(TOOL_CALL_CLOSE)
                if end == -1:
                    return out
                body, self.buffer = self.buffer[:end], self.buffer[end + len(TOOL_CALL_CLOSE):]
                self.in_call = False
                call = read_call(body, self.names)
                out += [call] if call else self._content(TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE)
                continue
            start = self.buffer.find(TOOL_CALL_OPEN)
            if start == -1:
                keep = _partial_suffix(self.buffer, TOOL_CALL_OPEN)
                out += self._content(self.buffer[:len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return out
            out += self._content(self.buffer[:start])
            self.buffer, self.in_call = self.buffer[start + len(TOOL_CALL_OPEN):], True

    def finish(self) -> list[str | FunctionCall]:
        """Flush at the end of the reply: an unclosed block or tag prefix is content; trailing whitespace is dropped."""
        rest = (TOOL_CALL_OPEN if self.in_call else "") + self.buffer
        self.buffer, self.in_call = "", False
        out = self._content(rest)
        self.held = ""
        return out

    def _content(self, text: str) -> list[str]:
        text = self.held + text
        if not self.started:
            text = text.lstrip()
        body = text.rstrip()
        self.held = text[len(body):]
        self.started = self.started or bool(body)
        return [body] if body else []


def parse_tool_calls(answer: str, names: set[str]) -> tuple[str | None, list[FunctionCall]]:
    """(content, calls) of a reply's answer part: content is the text outside the calls, stripped (None if empty)."""
    stream = ToolCallStream(names)
    parts = stream.feed(answer) + stream.finish()
    content = "".join(p for p in parts if isinstance(p, str))
    return content or None, [p for p in parts if isinstance(p, FunctionCall)]
