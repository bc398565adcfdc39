"""`r1kit serve` end to end: a live uvicorn server on loopback, driven by the official `openai` client and httpx.

Two models: a scripted fake whose reply is known in advance ("Think:ab</think> Yes", after the template's
prefilled "<think>\\n"), and the toy-moe model, whose seeded replies must equal `r1kit.generate`'s on a private
copy of the same weights (sampling is per-request seeded and independent of the batch).
"""

import asyncio
import copy
import json
import time

import httpx
import openai
import pytest

import r1kit
from r1kit.generation import Engine, generate
from r1kit.tokenizer import toy_tokenizer

from .conftest import live_server, scripted_engine

KEY = "sk-test"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def scripted():
    with live_server(scripted_engine()) as url:
        yield url


@pytest.fixture(scope="module")
def toy():
    model = r1kit.load_model("toy-moe").eval()
    reference = copy.deepcopy(model)  # the server's engine owns `model` (and its cache) from another thread
    engine = Engine(model, toy_tokenizer(), max_batch_size=8, max_seq_len=256)
    with live_server(engine, api_key=KEY) as url:
        yield url, reference


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def collect_stream(stream) -> tuple[str, str, list[str], object]:
    """(reasoning, content, order of delta kinds, usage) of a streamed chat completion with one choice."""
    reasoning, content, kinds, usage = "", "", [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            r = getattr(choice.delta, "reasoning_content", None)
            if r:
                reasoning += r
                kinds.append("reasoning")
            if choice.delta.content:
                content += choice.delta.content
                kinds.append("content")
            if choice.finish_reason:
                kinds.append(choice.finish_reason)
    return reasoning, content, kinds, usage


# ---- the reasoning split on a known reply ---------------------------------------------------------------------

def test_chat_returns_reasoning_apart_from_the_answer(scripted):
    r = client(scripted).chat.completions.create(model="toy", messages=HI, max_tokens=50)
    msg = r.choices[0].message
    assert (msg.reasoning_content, msg.content, r.choices[0].finish_reason) == ("Think:ab", "Yes", "stop")
    # prompt "<bos><|user|>hi<|assistant|><think>\n": 7 tokens; reply: 13 tokens + EOS
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 14, 21)


def test_streamed_chat_sends_reasoning_then_content_then_done(scripted):
    stream = client(scripted).chat.completions.create(model="toy", messages=HI, max_tokens=50, stream=True,
                                                      stream_options={"include_usage": True})
    reasoning, content, kinds, usage = collect_stream(stream)
    assert (reasoning, content) == ("Think:ab", "Yes")
    assert kinds == ["reasoning"] * kinds.count("reasoning") + ["content"] * kinds.count("content") + ["stop"]
    assert kinds.count("reasoning") > 1  # streamed token by token, not at the end
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 14)
    body = {"model": "toy", "messages": HI, "stream": True}
    with httpx.stream("POST", f"{scripted}/v1/chat/completions", json=body) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_earlier_assistant_turns_are_sent_without_their_reasoning(scripted):
    messages = [{"role": "user", "content": "q1"},
                {"role": "assistant", "content": "<think>secret plan</think>A1", "reasoning_content": "secret"},
                {"role": "user", "content": "q2"}]
    r = client(scripted).chat.completions.create(model="toy", messages=messages, max_tokens=3)
    # "<bos><|user|>q1<|assistant|>A1<eos><|user|>q2<|assistant|><think>\n", one token per tag or character
    assert r.usage.prompt_tokens == 1 + 1 + 2 + 1 + 2 + 1 + 1 + 2 + 1 + 1 + 1


def test_stop_strings_cut_the_reply_streamed_or_not(scripted):
    c = client(scripted)
    r = c.chat.completions.create(model="toy", messages=HI, stop=["s"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Ye", "stop")
    reasoning, content, kinds, _ = collect_stream(
        c.chat.completions.create(model="toy", messages=HI, stop=["es", "zz"], stream=True))
    assert (reasoning, content, kinds[-1]) == ("Think:ab", "Y", "stop")
    r = c.chat.completions.create(model="toy", messages=HI, stop="</think>")
    assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == ("Think:ab", "")


def test_text_completions_return_raw_text(scripted):
    c = client(scripted)
    r = c.completions.create(model="toy", prompt="<bos>x", max_tokens=5)
    assert (r.choices[0].text, r.choices[0].finish_reason) == ("yxyxy", "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (2, 5)
    r = c.completions.create(model="toy", prompt=["<bos>x", "<bos>y"], max_tokens=3, n=2)
    assert [ch.text for ch in r.choices] == ["yxy", "yxy", "xyx", "xyx"]
    pieces = [ch.choices[0].text for ch in c.completions.create(model="toy", prompt="<bos>x", max_tokens=4,
                                                                stream=True)]
    assert "".join(pieces) == "yxyx" and len([p for p in pieces if p]) == 4


def test_models_and_health(scripted):
    assert [m.id for m in client(scripted).models.list().data] == ["toy"]
    assert httpx.get(f"{scripted}/health").json()["status"] == "ok"


# ---- a real model: seeded replies equal the engine's own ------------------------------------------------------

def test_n_choices_with_a_seed_match_generate(toy):
    url, reference = toy
    r = client(url, KEY).chat.completions.create(model="toy", messages=HI, n=3, seed=11, max_tokens=12,
                                                 temperature=1.0)
    expected = generate(reference, toy_tokenizer(), [HI] * 3, max_new_tokens=12, temperature=1.0, seed=11)
    got = [(ch.message.reasoning_content or "", ch.message.content, ch.finish_reason) for ch in r.choices]
    assert got == [(e.reasoning, e.answer, e.finish_reason) for e in expected]
    assert len({e.text for e in expected}) == 3  # distinct seeds, distinct replies
    assert r.usage.completion_tokens == sum(len(e.token_ids) for e in expected)


def test_streamed_seeded_reply_with_stop_matches_generate(toy):
    url, reference = toy
    free = generate(reference, toy_tokenizer(), [HI], max_new_tokens=16, temperature=1.0, seed=5)[0]
    stop = free.text[4:6]
    cut = generate(reference, toy_tokenizer(), [HI], max_new_tokens=16, temperature=1.0, seed=5, stop=[stop])[0]
    assert cut.text == free.text[: free.text.find(stop)]
    stream = client(url, KEY).chat.completions.create(model="toy", messages=HI, seed=5, max_tokens=16,
                                                      temperature=1.0, stop=[stop], stream=True)
    reasoning, content, kinds, _ = collect_stream(stream)
    assert (reasoning, content, kinds[-1]) == (cut.reasoning, cut.answer, "stop")


def test_32_concurrent_requests_are_answered_while_health_keeps_answering(toy):
    url, reference = toy
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(32)]
    seeds = [100 + i for i in range(32)]
    expected = generate(reference, toy_tokenizer(), prompts, max_new_tokens=8, temperature=1.0, seed=seeds)

    async def main():
        api = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        done, health = asyncio.Event(), []

        async def poll(http: httpx.AsyncClient):
            while not done.is_set():
                t = time.perf_counter()
                r = await http.get(f"{url}/health")
                health.append((r.status_code, time.perf_counter() - t, r.json()["running"]))
                await asyncio.sleep(0.05)

        async def ask(i):
            return await api.chat.completions.create(model="toy", messages=prompts[i], seed=seeds[i],
                                                     max_tokens=8, temperature=1.0)

        async with httpx.AsyncClient() as http:
            poller = asyncio.create_task(poll(http))
            replies = await asyncio.gather(*(ask(i) for i in range(32)))
            done.set()
            await poller
        return replies, health

    replies, health = asyncio.run(main())
    for reply, e in zip(replies, expected):
        msg = reply.choices[0].message
        assert (msg.reasoning_content or "", msg.content, reply.choices[0].finish_reason) == (
            e.reasoning, e.answer, e.finish_reason)
    assert len(health) >= 3 and all(status == 200 for status, _, _ in health)
    assert max(latency for _, latency, _ in health) < 2.0
    assert max(running for _, _, running in health) > 1  # requests shared decode steps


# ---- bad input --------------------------------------------------------------------------------------------------

def _chat(**body):
    return {"model": "toy", "messages": HI, **body}


BAD = [  # (headers, raw body or JSON, status, error code or param to expect)
    ({}, _chat(), 401, "invalid_api_key"),
    ({"Authorization": "Bearer wrong"}, _chat(), 401, "invalid_api_key"),
    (None, b'{"model": "toy", "messages": [', 400, None),
    (None, {"model": "toy"}, 400, "messages"),
    (None, _chat(temperature=-1), 400, "temperature"),
    (None, _chat(top_p=0), 400, "top_p"),
    (None, _chat(n=0), 400, "n"),
    (None, _chat(max_tokens=0), 400, "max_tokens"),
    (None, _chat(max_tokens=1_000_000_000), 400, "max_tokens"),
    (None, _chat(max_completion_tokens=1_000_000_000), 400, "max_completion_tokens"),
    (None, _chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages.0.role"),
    (None, _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), 400, None),
    (None, _chat(logprobs=True), 400, "logprobs"),
    (None, _chat(stop=[1, 2]), 400, None),
    (None, _chat(model="gpt-4"), 404, "model_not_found"),
    (None, _chat(messages=[{"role": "user", "content": "a" * 300}]), 400, "context_length_exceeded"),
]


@pytest.mark.parametrize("headers, body, status, expect", BAD)
def test_bad_input_gets_an_openai_error_and_the_server_goes_on(toy, headers, body, status, expect):
    url, _ = toy
    headers = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
    if isinstance(body, bytes):
        r = httpx.post(f"{url}/v1/chat/completions", content=body,
                       headers={**headers, "Content-Type": "application/json"})
    else:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if expect is not None:
        assert expect in (error["code"], error["param"])
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize("route, body, field", [
    ("chat/completions", {"messages": HI, "max_tokens": 506}, "max_tokens"),
    ("chat/completions", {"messages": HI, "max_completion_tokens": 506, "max_tokens": 5}, "max_completion_tokens"),
    ("completions", {"prompt": ["<bos>x", "<bos>xyxyxyx"], "max_tokens": 505}, "max_tokens"),
])
def test_max_tokens_beyond_what_the_context_leaves_is_a_400_naming_the_field_and_the_limit(
        scripted, route, body, field):
    """The scripted server's context is 512 tokens. The chat prompt has 7 ("<bos><|user|>hi<|assistant|><think>\n"):
    505 tokens are left; the longest completion prompt has 8: 504 are left. As OpenAI and vLLM answer, asking for
    more is a 400 before anything is generated; asking for exactly what is left is served."""
    limit = 505 if route.startswith("chat") else 504
    r = httpx.post(f"{scripted}/v1/{route}", json={"model": "toy", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert field in error["message"] and f"at most {limit} tokens" in error["message"]
    r = httpx.post(f"{scripted}/v1/{route}", json={"model": "toy", **body, field: limit})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_client_raises_its_typed_errors(toy):
    url, _ = toy
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        client(url, KEY).chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.BadRequestError, match="context"):
        client(url, KEY).completions.create(model="toy", prompt="a" * 400)


# ---- load shedding, disconnects, time limits --------------------------------------------------------------------

def _running(url: str) -> int:
    return httpx.get(f"{url}/health").json()["running"]


def _wait_idle(url: str, within: float = 5.0) -> float:
    t = time.monotonic()
    while _running(url) and time.monotonic() - t < within:
        time.sleep(0.02)
    return time.monotonic() - t


def test_full_server_answers_429_and_a_disconnect_frees_the_slot():
    endless = {"model": "toy", "prompt": "<bos>x", "max_tokens": 400}
    with live_server(scripted_engine(delay_s=0.01, max_batch_size=1), max_queue=0) as url:
        with httpx.stream("POST", f"{url}/v1/completions", json={**endless, "stream": True}) as first:
            lines = first.iter_lines()  # keep the iterator: dropping it closes the connection
            next(lines)  # generating now
            r = httpx.post(f"{url}/v1/completions", json=endless)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert _wait_idle(url) < 2.0  # the stream's client hung up: its generation stopped
        with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
            httpx.post(f"{url}/v1/completions", json=endless, timeout=0.5)
        assert _wait_idle(url) < 2.0
        r = httpx.post(f"{url}/v1/completions", json={**endless, "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "yxy"


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_has_its_engine_request_aborted_and_its_row_freed(stream):
    """Proof at the engine, not just the health count: the request that was generating is aborted (finish_reason
    "abort", well short of its 400 tokens, which would take 4 s) within a moment of the hang-up, and both cache
    rows are free again."""
    engine = scripted_engine(delay_s=0.01, max_batch_size=2)
    aborted = []  # (engine request, when)
    real_abort = engine.abort

    def abort(req):
        real_abort(req)
        aborted.append((req, time.monotonic()))

    engine.abort = abort
    body = {"model": "toy", "prompt": "<bos>x", "max_tokens": 400, "stream": stream}
    with live_server(engine) as url:
        if stream:
            with httpx.stream("POST", f"{url}/v1/completions", json=body) as resp:
                lines = resp.iter_lines()
                assert next(lines).startswith("data: ")  # generating now
                assert len(engine.running) == 1
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
        hung_up = time.monotonic()
        while not aborted and time.monotonic() - hung_up < 3.0:
            time.sleep(0.01)
        assert len(aborted) == 1, "the engine request was not aborted"
        req, when = aborted[0]
        assert when - hung_up < 1.0
        assert req.finish_reason == "abort" and req.row is None and 0 < len(req.out_ids) < 400
        assert engine.running == [] and sorted(engine.free_rows) == [0, 1]
        assert not engine.has_work()


def test_a_request_past_its_time_limit_stops_with_length():
    with live_server(scripted_engine(delay_s=0.01), request_timeout_s=0.5) as url:
        t = time.monotonic()
        r = client(url).completions.create(model="toy", prompt="<bos>x", max_tokens=400)
        assert time.monotonic() - t < 3.0
        assert r.choices[0].finish_reason == "length" and 0 < r.usage.completion_tokens < 400
        assert json.loads(httpx.get(f"{url}/health").text)["running"] == 0


def test_usage_reports_the_prompt_tokens_served_from_the_prompt_cache():
    """OpenAI's usage.prompt_tokens_details.cached_tokens: 0 for a first prompt; the same prompt again finds all
    but its last token (7 tokens: <bos><|user|>hi<|assistant|><think>\\n) kept in the row the first reply left."""
    with live_server(scripted_engine(prompt_cache=True)) as url:
        first = client(url).chat.completions.create(model="toy", messages=HI, max_tokens=50)
        second = client(url).chat.completions.create(model="toy", messages=HI, max_tokens=50)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == 7
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 6
    assert second.choices[0].message.content == first.choices[0].message.content == "Yes"
