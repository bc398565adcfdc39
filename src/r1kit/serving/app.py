"""The OpenAI-compatible HTTP app: FastAPI routes over one `EngineWorker`.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions.
- Chat replies carry the think block as `reasoning_content` and the answer as `content`; streamed, the
  `reasoning_content` deltas come first, then `content`, then `data: [DONE]`. Earlier assistant turns are sent to
  the template without their reasoning (any `<think>...</think>` is cut; a `reasoning_content` field is ignored).
- Function calling (`tools`, `tool_choice` "auto"/"none", `role: tool` messages, assistant `tool_calls`): the
  tools are rendered into the prompt in the Hermes/Qwen2.5 format (natively when the chat template reads `tools`,
  else by r1kit.tools.functions into plain messages), and well-formed `<tool_call>` blocks of the answer come back
  as `tool_calls` with finish_reason "tool_calls". Streamed, a call is sent when its block closes: one delta with
  its index, id, type and name, then one with its arguments; content that may begin a block is held back until
  it is known. A malformed call stays content.
- Every error is an OpenAI-style body {"error": {"message", "type", "param", "code"}}: 400 bad JSON or
  parameters, a prompt longer than the context or a max_tokens beyond what the context leaves after it, 401 wrong
  or missing API key (when one is set), 404 unknown model or route, 429 server full, 500 engine failure.
- A client that disconnects (streamed or not) aborts its requests before the next decode step, freeing their
  engine rows.

Left out: server-side tools (the engine's Python interpreter), logprobs, embeddings, multiple models per server, TLS (put a proxy in front).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from r1kit.errors import ConfigError, R1kitError
from r1kit.generation import Completion, Engine, SamplingParams, split_reasoning
from r1kit.reasoning import ReasoningStream
from r1kit.serving import protocol as P
from r1kit.serving.scheduler import EngineWorker, QueueFull, Ticket, Update
from r1kit.tools.functions import FunctionCall, ToolCallStream, render_chat

_GONE = object()  # put on a request's update queue when its client disconnects


@dataclass
class ServerConfig:
    model_name: str  # the name clients pass as `model`
    api_key: str | None = None  # None: no authentication
    max_queue: int = 256  # requests that may wait for a free engine row before 429
    request_timeout_s: float = 600.0  # wall-clock budget of one request, queueing included
    # a system message for requests that bring none (`--tools python` describes the interpreter with it)
    default_system: str | None = None


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    """An app serving `engine`; the engine's worker thread starts and stops with the app's lifespan."""
    worker = EngineWorker(engine, max_queue=config.max_queue, request_timeout_s=config.request_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="r1kit", lifespan=lifespan)
    app.state.worker = worker
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    _add_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok", **worker.load()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "r1kit", "max_model_len": engine.max_seq_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, request: Request):
        _check_request(body, config)
        tools = body.offered_tools()
        messages = render_messages(body.messages)
        if config.default_system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": config.default_system})
        prompt = _render(engine, messages, tools)
        ids, prefilled = _encode(engine, prompt, param="messages")
        jobs = [(ids, prefilled, _params(body, i, engine, ids)) for i in range(body.n)]
        tool_names = {t["function"]["name"] for t in tools} if tools else None
        return await _serve(request, worker, jobs, len(ids), _ChatFormat(config.model_name, tool_names), body)

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request):
        _check_request(body, config)
        encoded = [_encode(engine, p, param="prompt") for p in body.prompts()]
        jobs = [(ids, False, _params(body, k * body.n + i, engine, ids))
                for k, (ids, _) in enumerate(encoded) for i in range(body.n)]
        prompt_tokens = sum(len(ids) for ids, _ in encoded)
        return await _serve(request, worker, jobs, prompt_tokens, _TextFormat(config.model_name), body)

    return app


# ---- request preparation ------------------------------------------------------------------------------------------

def render_messages(messages: list[P.ChatMessage]) -> list[dict]:
    """Messages as chat templates want them (transformers' format): assistant turns keep only their answer, as R1
    templates do, and their tool calls carry arguments as objects (templates serialize them with `tojson`)."""
    out = []
    for m in messages:
        text = m.text()
        if m.role == "assistant":
            text = split_reasoning(text)[1]
        message = {"role": "system" if m.role == "developer" else m.role, "content": text}
        if m.role == "assistant" and m.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.function.name, "arguments": _arguments(c)}}
                                     for c in m.tool_calls]
        if m.role == "tool":
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def _arguments(call: P.AssistantToolCall) -> dict | str:
    """A call's arguments as an object; a string that is not a JSON object is passed on verbatim."""
    try:
        args = json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments
    return args if isinstance(args, dict) else call.function.arguments


def _render(engine: Engine, messages: list[dict], tools: list[dict] | None) -> str:
    from jinja2 import TemplateError

    try:
        return render_chat(engine.tokenizer, messages, tools)
    except (R1kitError, TemplateError) as e:  # no template, or one that refuses these messages (role order, ...)
        raise P.ApiError(400, f"the chat template cannot render these messages: {e}", param="messages") from e


def _check_request(body: P._GenerationRequest, config: ServerConfig) -> None:
    if body.model != config.model_name:
        raise P.ApiError(404, f"the model '{body.model}' does not exist; this server serves '{config.model_name}'",
                         param="model", code="model_not_found")
    body.check_supported()


def _encode(engine: Engine, prompt, param: str) -> tuple[list[int], bool]:
    try:
        ids, prefilled = engine.encode(prompt)
    except R1kitError as e:
        raise P.ApiError(400, str(e), param=param) from e
    if not ids:
        raise P.ApiError(400, "the prompt is empty", param=param)
    if len(ids) >= engine.max_seq_len:
        raise P.ApiError(400, f"the prompt has {len(ids)} tokens; this model's context is {engine.max_seq_len} "
                              "tokens, prompt and reply together", param=param, code="context_length_exceeded")
    return ids, prefilled


def _params(body: P._GenerationRequest, choice: int, engine: Engine, ids: list[int]) -> SamplingParams:
    try:
        return body.sampling_params(choice, prompt_tokens=len(ids), context=engine.max_seq_len)
    except ConfigError as e:
        raise P.ApiError(400, str(e)) from e


# ---- running a request --------------------------------------------------------------------------------------------

async def _serve(request: Request, worker: EngineWorker, jobs: list, prompt_tokens: int, fmt, body):
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue = asyncio.Queue()
    try:
        tickets = worker.submit(jobs, lambda i, u: loop.call_soon_threadsafe(updates.put_nowait, (i, u)))
    except QueueFull as e:
        raise P.ApiError(429, str(e), type="rate_limit_error", code="rate_limit_exceeded") from e
    prefilled = [job[1] for job in jobs]
    if body.stream:
        chunks = _stream(request, worker, tickets, updates, fmt, prefilled, prompt_tokens, body.include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    watcher = asyncio.create_task(_watch_disconnect(request, updates))
    completions: list[Completion | None] = [None] * len(jobs)
    try:
        while any(c is None for c in completions):
            i, update = await updates.get()
            if update is _GONE:
                return Response(status_code=499)  # nobody is listening; the tickets are cancelled below
            if update.error:
                raise P.ApiError(500, update.error, type="server_error")
            if update.completion is not None:
                completions[i] = update.completion
    finally:
        watcher.cancel()
        worker.cancel([t for t, c in zip(tickets, completions) if c is None])
    return JSONResponse(fmt.response(P.new_id(fmt.id_prefix), completions, prompt_tokens))


async def _stream(request: Request, worker: EngineWorker, tickets: list[Ticket], updates: asyncio.Queue, fmt,
                  prefilled: list[bool], prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    rid = P.new_id(fmt.id_prefix)
    watcher = asyncio.create_task(_watch_disconnect(request, updates))
    states = [fmt.start(p) for p in prefilled]
    completions: list[Completion | None] = [None] * len(tickets)
    try:
        for i in range(len(tickets)):
            for chunk in fmt.opening(rid, i):
                yield _sse(chunk)
        while any(c is None for c in completions):
            i, update = await updates.get()
            if update is _GONE:
                return
            if update.error:
                yield _sse(P.ApiError(500, update.error, type="server_error").body())
                return
            for chunk in fmt.delta(rid, i, states[i], update):
                yield _sse(chunk)
            if update.completion is not None:
                completions[i] = update.completion
        if include_usage:
            yield _sse(P.usage_chunk(rid, fmt.model, fmt.chunk_object, prompt_tokens, completions))
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        worker.cancel([t for t, c in zip(tickets, completions) if c is None])


async def _watch_disconnect(request: Request, updates: asyncio.Queue) -> None:
    """Wait for the client to hang up (the body is already read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    updates.put_nowait((None, _GONE))


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass
class _ChatStream:
    """Where one streamed choice is: the reasoning split, then (with tools) the calls split of its answer."""

    split: ReasoningStream
    calls: ToolCallStream | None
    sent_calls: int = 0


class _ChatFormat:
    """Chat replies: reasoning_content then content (and tool_calls) deltas, split as they stream."""

    id_prefix, chunk_object = "chatcmpl", "chat.completion.chunk"

    def __init__(self, model: str, tool_names: set[str] | None = None):
        self.model, self.tool_names = model, tool_names

    def start(self, prefilled: bool) -> _ChatStream:
        return _ChatStream(ReasoningStream(prefilled), ToolCallStream(self.tool_names) if self.tool_names else None)

    def opening(self, rid: str, i: int) -> list[dict]:
        return [P.chat_chunk(rid, self.model, i, {"role": "assistant", "content": ""})]

    def delta(self, rid: str, i: int, state: _ChatStream, update: Update) -> list[dict]:
        done = update.completion is not None
        parts = [state.split.feed(update.text)] + ([state.split.finish()] if done else [])
        chunks = []
        for reasoning, content in parts:
            if reasoning:
                chunks.append(P.chat_chunk(rid, self.model, i, {"reasoning_content": reasoning}))
            answer = [content] if state.calls is None else state.calls.feed(content)
            for piece in answer:
                chunks += self._answer_chunks(rid, i, state, piece)
        if done:
            for piece in state.calls.finish() if state.calls is not None else []:
                chunks += self._answer_chunks(rid, i, state, piece)
            reason = P.finish_reason(update.completion, state.sent_calls > 0)
            chunks.append(P.chat_chunk(rid, self.model, i, {}, reason))
        return chunks

    def _answer_chunks(self, rid: str, i: int, state: _ChatStream, piece: str | FunctionCall) -> list[dict]:
        if isinstance(piece, str):
            return [P.chat_chunk(rid, self.model, i, {"content": piece})] if piece else []
        # as OpenAI streams a call: index, id, type and name first, then the arguments
        index, state.sent_calls = state.sent_calls, state.sent_calls + 1
        head = {"index": index, "id": piece.id, "type": "function", "function": {"name": piece.name, "arguments": ""}}
        args = {"index": index, "function": {"arguments": piece.arguments}}
        return [P.chat_chunk(rid, self.model, i, {"tool_calls": [head]}),
                P.chat_chunk(rid, self.model, i, {"tool_calls": [args]})]

    def response(self, rid: str, completions: list[Completion], prompt_tokens: int) -> dict:
        return P.chat_response(rid, self.model, completions, prompt_tokens, self.tool_names)


class _TextFormat:
    """Plain completions: the raw text, think tags and all."""

    id_prefix, chunk_object = "cmpl", "text_completion"

    def __init__(self, model: str):
        self.model = model

    def start(self, prefilled: bool) -> None:
        return None

    def opening(self, rid: str, i: int) -> list[dict]:
        return []

    def delta(self, rid: str, i: int, state: None, update: Update) -> list[dict]:
        chunks = [P.text_chunk(rid, self.model, i, update.text)] if update.text else []
        if update.completion is not None:
            chunks.append(P.text_chunk(rid, self.model, i, "", update.completion.finish_reason))
        return chunks

    def response(self, rid: str, completions: list[Completion], prompt_tokens: int) -> dict:
        return P.text_response(rid, self.model, completions, prompt_tokens)


# ---- errors and authentication ------------------------------------------------------------------------------------

def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(P.ApiError)
    async def api_error(request, e: P.ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return JSONResponse(P.ApiError(400, "the request body is not valid JSON").body(), status_code=400)
        first = errors[0] if errors else {}
        if tuple(first.get("loc", ())) == ("body",):
            message = "the request body must be a JSON object (send Content-Type: application/json)"
            return JSONResponse(P.ApiError(400, message).body(), status_code=400)
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")
        return JSONResponse(P.ApiError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(P.ApiError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code)


class ApiKeyMiddleware:
    """Answers 401 to /v1/* requests without `Authorization: Bearer <api_key>`; /health stays open."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = P.ApiError(401, "incorrect or missing API key (send 'Authorization: Bearer <key>')",
                                   code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
