"""The OpenAI wire format: request schemas, error bodies, response and stream-chunk builders.

Requests are validated by pydantic; a field out of range becomes a 400 naming the field. Fields the OpenAI API
has but r1kit does not implement (logprobs, penalties, ...) are rejected when set to anything but their
neutral value, so a client never silently gets something other than what it asked for; other unknown fields
are ignored, as OpenAI-compatible servers commonly do. `top_k` and `min_p` are accepted as extensions (vLLM).

Function calling: `tools` (OpenAI's function schema) with `tool_choice` "auto" (default) or "none"; a reply's
`<tool_call>` blocks come back as `tool_calls` (the format: r1kit.tools.functions, docs/tools.md).

Left out: tool_choice "required" or a named function and strict schemas (no constrained decoding), logprobs,
structured output, `echo`/`best_of`/`suffix` on /v1/completions, token-id prompts.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from r1kit.generation import Completion, SamplingParams
from r1kit.tools.functions import parse_tool_calls

# fields rejected unless absent or neutral; the value is what counts as neutral besides None/False/0/empty
UNSUPPORTED = {"logprobs": None, "top_logprobs": None, "functions": None,
               "function_call": "none", "logit_bias": None, "presence_penalty": None, "frequency_penalty": None,
               "response_format": {"type": "text"}, "echo": None, "best_of": 1, "suffix": None}


class ApiError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- requests -----------------------------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None: 1.0, the OpenAI default
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, lt=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def check_supported(self) -> None:
        for name, value in (self.model_extra or {}).items():
            neutral = UNSUPPORTED.get(name, ...)
            if neutral is not ... and value not in (None, False, 0, "", [], {}, neutral):
                raise ApiError(400, f"'{name}' is not supported by this server", param=name,
                               code="unsupported_parameter")

    def sampling_params(self, choice: int, *, prompt_tokens: int, context: int) -> SamplingParams:
        """Engine parameters of choice number `choice`; a given seed becomes seed + choice, so choices differ.

        max_tokens defaults to what the context leaves after the prompt; asking for more is a 400 naming the field
        and the limit (as OpenAI and vLLM answer), not a reply that runs to the end of the context."""
        room = context - prompt_tokens
        field, asked = self._max_tokens()
        if asked is not None and asked > room:
            raise ApiError(400, f"{field} is too large: {asked}. This model's context is {context} tokens and the "
                                f"prompt has {prompt_tokens}, so at most {room} tokens can be generated",
                           param=field, code="invalid_value")
        return SamplingParams(
            max_new_tokens=room if asked is None else asked,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
            seed=None if self.seed is None else self.seed + choice, stop=self.stop or [])

    def _max_tokens(self) -> tuple[str, int | None]:
        """(the field that sets the reply's length, its value)."""
        return "max_tokens", self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule; the prompt quotes the name unescaped
    description: str | None = None
    parameters: dict | None = None  # a JSON Schema object, shown to the model as is (arguments are not checked)
    strict: bool | None = None

    @field_validator("strict")
    @classmethod
    def _not_strict(cls, v):
        if v:
            raise ValueError("strict schemas need constrained decoding, which this server does not do")
        return v


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class CalledFunction(BaseModel):
    name: str
    arguments: str  # JSON, as OpenAI sends it


class AssistantToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `reasoning_content` sent back on assistant turns: dropped

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[AssistantToolCall] | None = None  # on assistant turns
    tool_call_id: str | None = None  # on tool turns; the format does not show it to the model

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none"] | None = None  # None: "auto" when tools are given, as OpenAI

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools):
        names = [t.function.name for t in tools or []]
        if len(set(names)) < len(names):
            raise ValueError(f"function names must be unique, got {names}")
        return tools

    def offered_tools(self) -> list[dict] | None:
        """The tools shown to the model, as OpenAI-format dicts; None when there are none or tool_choice is "none"."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def _max_tokens(self) -> tuple[str, int | None]:
        if self.max_completion_tokens is not None:  # OpenAI's successor of max_tokens wins when both are sent
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str]

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or not all(prompts):
            raise ApiError(400, "prompt must be a non-empty string or a list of non-empty strings", param="prompt")
        return prompts


# ---- responses ----------------------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completions: list[Completion]) -> dict:
    """OpenAI's usage, with `prompt_tokens_details.cached_tokens`: the prompt tokens the engine's prompt cache
    did not have to prefill (the n choices share one prompt)."""
    completion_tokens = sum(len(c.token_ids) for c in completions)
    cached = min(prompt_tokens, max((c.cached_tokens for c in completions), default=0))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


def chat_message(c: Completion, tool_names: set[str] | None = None) -> dict:
    """The assistant message: the answer as `content`, the think block as `reasoning_content` (None if none).

    With `tool_names` (the functions offered), well-formed `<tool_call>` blocks of the answer become `tool_calls`
    and `content` is the text around them (None if there is none)."""
    message = {"role": "assistant", "content": c.answer, "reasoning_content": c.reasoning or None}
    if tool_names:
        content, calls = parse_tool_calls(c.answer, tool_names)
        if calls:
            message.update(content=content, tool_calls=[call.to_openai() for call in calls])
    return message


def finish_reason(c: Completion, called_tools: bool) -> str:
    """"tool_calls" when a reply that ended by itself made calls, as OpenAI says; a cut reply keeps its reason."""
    return "tool_calls" if called_tools and c.finish_reason == "stop" else c.finish_reason


def chat_response(rid: str, model: str, completions: list[Completion], prompt_tokens: int,
                  tool_names: set[str] | None = None) -> dict:
    messages = [chat_message(c, tool_names) for c in completions]
    choices = [{"index": i, "message": m, "finish_reason": finish_reason(c, "tool_calls" in m), "logprobs": None}
               for i, (c, m) in enumerate(zip(completions, messages))]
    return {"id": rid, "object": "chat.completion", "created": now(), "model": model, "choices": choices,
            "usage": usage(prompt_tokens, completions)}


def text_response(rid: str, model: str, completions: list[Completion], prompt_tokens: int) -> dict:
    choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
               for i, c in enumerate(completions)]
    return {"id": rid, "object": "text_completion", "created": now(), "model": model, "choices": choices,
            "usage": usage(prompt_tokens, completions)}


def chat_chunk(rid: str, model: str, index: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": now(), "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def text_chunk(rid: str, model: str, index: int, text: str, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk(rid: str, model: str, obj: str, prompt_tokens: int, completions: list[Completion]) -> dict:
    """The last chunk when stream_options.include_usage is set: no choices, the request's usage."""
    return {"id": rid, "object": obj, "created": now(), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completions)}
