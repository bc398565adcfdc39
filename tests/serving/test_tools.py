"""Function calling through `r1kit serve`, driven by the official `openai` client against a live server.

The model is a `ReplayModel` whose reply is chosen by the prompt it is given, like a tiny weather agent: offered
tools, it calls get_weather; shown a tool response, it answers from it. The prompts it saw are compared with
hand-written ones (the toy R1-style template, one token per character or tag).
"""

import json

import httpx
import openai
import pytest

from .conftest import live_server, replay_engine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]

# what the scripted model writes for a user message (after the template's "<think>\n")
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
REPLIES = {
    "Weather in Paris?": "I should look it up.</think>\n" + CALL,
    "Paris and Lyon?": ("Two cities.</think>\nChecking both.\n" + CALL + "\n"
                        + CALL.replace("Paris", "Lyon") + "\nOne moment."),
    "bad json": 'Hm.</think>\n<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>',
    "unknown function": 'Hm.</think>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    "arguments not an object": 'Hm.</think>\n<tool_call>\n{"name": "get_weather", "arguments": "Paris"}\n</tool_call>',
    "never closed": "Hm.</think>\nSure: <tool_call>\n{\"name\": \"get_weather\"",
    "call while thinking": "Maybe " + CALL + " no.</think>\nNo call needed.",
}


def weather_agent(prompt: str) -> str:
    last_turn = prompt.rsplit("<|user|>", 1)[-1]
    if last_turn.startswith("<tool_response>"):  # answer from the tool's result
        result = last_turn.split("<tool_response>\n", 1)[1].split("\n</tool_response>", 1)[0]
        return f"The tool answered.</think>\nIt is {result}."
    if "# Tools" not in prompt:
        return "No tools.</think>\nI cannot check the weather."
    return REPLIES[last_turn.removesuffix("<|assistant|><think>\n")]


@pytest.fixture(scope="module")
def agent():
    engine = replay_engine(weather_agent)
    with live_server(engine) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0), engine.model, url


def ask(api: openai.OpenAI, content: str, **kw):
    return api.chat.completions.create(model="toy", messages=[{"role": "user", "content": content}],
                                       tools=[WEATHER], max_tokens=300, **kw)


def collect(stream) -> dict:
    """A streamed choice put together by hand, keeping the tool-call deltas as they came."""
    out = {"reasoning": "", "content": "", "deltas": [], "finish_reason": None}
    for chunk in stream:
        for choice in chunk.choices:
            out["reasoning"] += getattr(choice.delta, "reasoning_content", None) or ""
            out["content"] += choice.delta.content or ""
            out["deltas"] += [d.model_dump(exclude_none=True) for d in choice.delta.tool_calls or []]
            out["finish_reason"] = choice.finish_reason or out["finish_reason"]
    return out


# ---- tool calls in the reply ------------------------------------------------------------------------------------

def test_a_reply_with_a_tool_call_returns_tool_calls(agent):
    api, _, _ = agent
    r = api.chat.completions.create(model="toy", messages=ASK, tools=[WEATHER], max_tokens=300)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert (choice.message.content, choice.message.reasoning_content) == (None, "I should look it up.")
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})


def test_several_calls_and_the_text_around_them(agent):
    api, _, _ = agent
    r = ask(api, "Paris and Lyon?")
    message = r.choices[0].message
    assert message.content == "Checking both.\n\n\nOne moment."  # the text outside the blocks, verbatim
    assert [json.loads(c.function.arguments)["city"] for c in message.tool_calls] == ["Paris", "Lyon"]
    assert len({c.id for c in message.tool_calls}) == 2


def test_streamed_tool_calls_come_as_openai_sends_them(agent):
    api, _, _ = agent
    got = collect(ask(api, "Paris and Lyon?", stream=True))
    assert got["reasoning"] == "Two cities." and got["finish_reason"] == "tool_calls"
    assert got["content"] == "Checking both.\n\n\nOne moment."  # as the non-streamed reply has it
    # per call: index, id, type and name first (empty arguments), then the arguments
    heads, args = got["deltas"][0::2], got["deltas"][1::2]
    assert [(h["index"], h["type"], h["function"]) for h in heads] == [
        (i, "function", {"name": "get_weather", "arguments": ""}) for i in (0, 1)]
    assert all(h["id"].startswith("call_") for h in heads) and heads[0]["id"] != heads[1]["id"]
    assert args == [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}},
                                 {"index": 1, "function": {"arguments": '{"city": "Lyon"}'}}]


def test_the_openai_stream_helper_assembles_the_streamed_call(agent):
    api, _, _ = agent
    helper = getattr(api.chat.completions, "stream", None) or api.beta.chat.completions.stream  # moved out of beta
    with helper(model="toy", messages=ASK, tools=[WEATHER], max_tokens=300) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (final.choices[0].finish_reason, call.function.name, call.function.arguments) == (
        "tool_calls", "get_weather", '{"city": "Paris"}')


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("question", ["bad json", "unknown function", "arguments not an object", "never closed"])
def test_a_malformed_tool_call_stays_content(agent, question, stream):
    api, _, _ = agent
    expected = REPLIES[question].split("</think>\n", 1)[1]
    if stream:
        got = collect(ask(api, question, stream=True))
        assert (got["content"], got["deltas"], got["finish_reason"]) == (expected, [], "stop")
    else:
        r = ask(api, question)
        assert (r.choices[0].message.content, r.choices[0].message.tool_calls) == (expected, None)
        assert r.choices[0].finish_reason == "stop"


def test_a_tool_call_inside_the_reasoning_is_not_a_call(agent):
    api, _, _ = agent
    r = ask(api, "call while thinking")
    message = r.choices[0].message
    assert (message.content, message.tool_calls, r.choices[0].finish_reason) == ("No call needed.", None, "stop")
    assert CALL in message.reasoning_content


# ---- the client-side loop: run the function, send the result back -------------------------------------------------

def get_weather(city: str) -> str:
    return f"sunny and 21 C in {city}"


SYSTEM_AND_TOOLS = (
    "<bos><|system|>Answer briefly.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def test_a_client_loop_runs_the_function_and_the_model_answers_from_its_result(agent):
    api, model, _ = agent
    messages = [{"role": "system", "content": "Answer briefly."}, *ASK]
    first = api.chat.completions.create(model="toy", messages=messages, tools=[WEATHER], max_tokens=300)
    assert model.prompts[-1] == SYSTEM_AND_TOOLS + "<|user|>Weather in Paris?<|assistant|><think>\n"
    message = first.choices[0].message
    messages.append(message)  # the assistant turn as the client got it, tool_calls (and reasoning_content) included
    for call in message.tool_calls:
        result = get_weather(**json.loads(call.function.arguments))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

    second = api.chat.completions.create(model="toy", messages=messages, tools=[WEATHER], max_tokens=300)
    assert model.prompts[-1] == (
        SYSTEM_AND_TOOLS + "<|user|>Weather in Paris?"
        "<|assistant|><tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><eos>"
        "<|user|><tool_response>\nsunny and 21 C in Paris\n</tool_response>"
        "<|assistant|><think>\n")
    reply = second.choices[0]
    assert (reply.message.content, reply.message.tool_calls, reply.finish_reason) == (
        "It is sunny and 21 C in Paris.", None, "stop")
    assert reply.message.reasoning_content == "The tool answered."


def test_tool_choice_none_renders_no_tools_and_parses_no_calls(agent):
    api, model, _ = agent
    r = api.chat.completions.create(model="toy", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=300)
    assert model.prompts[-1] == "<bos><|user|>Weather in Paris?<|assistant|><think>\n"
    assert (r.choices[0].message.content, r.choices[0].message.tool_calls) == ("I cannot check the weather.", None)


# ---- malformed tools: a 400 naming the field ----------------------------------------------------------------------

def _fn(**changes):
    return {"type": "function", "function": {**WEATHER["function"], **changes}}


@pytest.mark.parametrize("fields, param", [
    ({"tools": "get_weather"}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ({"tools": [{"type": "retrieval", "function": WEATHER["function"]}]}, "tools.0.type"),
    ({"tools": [WEATHER, {"type": "function", "function": {"description": "no name"}}]}, "tools.1.function.name"),
    ({"tools": [_fn(name="get weather!")]}, "tools.0.function.name"),
    ({"tools": [_fn(parameters="city: str")]}, "tools.0.function.parameters"),
    ({"tools": [_fn(strict=True)]}, "tools.0.function.strict"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]},
     "messages.1.tool_calls.0.function.arguments"),
])
def test_malformed_tools_are_a_400_naming_the_field(agent, fields, param):
    _, _, url = agent
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "toy", "messages": ASK, **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"].startswith(param), error
    assert error["type"] == "invalid_request_error"


def test_the_openai_client_raises_bad_request_for_malformed_tools(agent):
    api, _, _ = agent
    with pytest.raises(openai.BadRequestError, match="tools.0.function.name"):
        api.chat.completions.create(model="toy", messages=ASK, tools=[_fn(name="")])
