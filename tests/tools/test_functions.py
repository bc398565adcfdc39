"""The function-calling format (r1kit.tools.functions): prompts against hand-written text, replies parsed whole and
streamed."""

import itertools
import json

import pytest

from r1kit.tokenizer import apply_chat_template, toy_tokenizer
from r1kit.tools.functions import (
    ToolCallStream,
    parse_tool_calls,
    plain_messages,
    render_chat,
    template_renders_tools,
    tools_system_text,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "Time now"}}
TOOLS_TEXT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}\n'
    '{"type": "function", "function": {"name": "get_time", "description": "Time now"}}\n'
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather and time?"},
    {"role": "assistant", "content": "<think>plan</think>Checking.", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "a", "content": "sunny"},
    {"role": "tool", "tool_call_id": "b", "content": "noon"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": {"zone": "UTC"}}}]},
    {"role": "tool", "tool_call_id": "c", "content": "11:00"},
]
# SmolLM2-135M-Instruct's template, from its GGUF metadata: it knows no tools
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_tools_system_text_is_qwen25s():
    assert tools_system_text([WEATHER, CLOCK]) == TOOLS_TEXT


def test_the_toy_template_renders_tools_calls_and_results_natively():
    tok = toy_tokenizer()
    assert template_renders_tools(tok)
    assert render_chat(tok, CONVERSATION, [WEATHER, CLOCK]) == (
        "<bos><|system|>Be brief.\n\n" + TOOLS_TEXT + "<|user|>Weather and time?"
        "<|assistant|>Checking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><eos>'
        "<|user|><tool_response>\nsunny\n</tool_response>\n<tool_response>\nnoon\n</tool_response>"
        '<|assistant|><tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call><eos>'
        "<|user|><tool_response>\n11:00\n</tool_response><|assistant|><think>\n")


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:], CONVERSATION[:2], CONVERSATION[1:4]])
@pytest.mark.parametrize("tools", [[WEATHER, CLOCK], None])
def test_plain_messages_render_what_the_native_template_renders(messages, tools):
    """The fallback for templates without tools writes the toy template's native text (one format, two writers)."""
    native = toy_tokenizer()
    blind = toy_tokenizer()
    blind.chat_template = native.chat_template.replace("tools", "no_tool_list")
    assert not template_renders_tools(blind)
    assert render_chat(blind, messages, tools) == render_chat(native, messages, tools)


def test_without_tools_the_toy_template_is_unchanged():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "<think>old</think> a1"}, {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2", "reasoning": "r2"}]
    expected = "<bos><|system|>S<|user|>q1<|assistant|>a1<eos><|user|>q2<|assistant|><think>\nr2\n</think>\na2<eos>"
    assert apply_chat_template(toy_tokenizer(), messages, add_generation_prompt=False) == expected
    assert render_chat(toy_tokenizer(), messages[:4], None) == expected[:expected.index("<|assistant|><think>")] + (
        "<|assistant|><think>\n")


def test_a_template_without_tools_gets_them_as_plain_messages():
    tok = toy_tokenizer()
    tok.chat_template = SMOLLM2_TEMPLATE
    assert not template_renders_tools(tok)
    messages = [CONVERSATION[1], {**CONVERSATION[2], "content": "Checking."}, CONVERSATION[3], CONVERSATION[4]]
    assert render_chat(tok, messages, [WEATHER, CLOCK]) == (
        "<|im_start|>system\n" + TOOLS_TEXT + "<|im_end|>\n<|im_start|>user\nWeather and time?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nnoon\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n")
    assert plain_messages([{"role": "user", "content": "hi"}], None) == [{"role": "user", "content": "hi"}]


# ---- reading replies ----------------------------------------------------------------------------------------------

NAMES = {"get_weather", "get_time"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("answer, content, calls", [
    (CALL, None, [("get_weather", {"city": "Paris"})]),
    ("  Let me see.\n" + CALL + "\n", "Let me see.", [("get_weather", {"city": "Paris"})]),
    (CALL + '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', None,
     [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    ("a " + CALL + " b", "a  b", [("get_weather", {"city": "Paris"})]),
    ("no calls at all", "no calls at all", []),
    ('<tool_call>{"name": "get_weather", "arguments": {city}}</tool_call>',  # bad JSON
     '<tool_call>{"name": "get_weather", "arguments": {city}}</tool_call>', []),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not an offered function
     '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', []),
    ('<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>',  # arguments not an object
     '<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>', []),
    ('<tool_call>{"name": "get_time"}</tool_call>', '<tool_call>{"name": "get_time"}</tool_call>', []),
    ('<tool_call>["get_time", {}]</tool_call>', '<tool_call>["get_time", {}]</tool_call>', []),
    ("x " + CALL + ' <tool_call>{"name": "get_time", "argu', 'x  <tool_call>{"name": "get_time", "argu',
     [("get_weather", {"city": "Paris"})]),  # cut inside a block: the unclosed block is content
    ("ends with <tool_ca", "ends with <tool_ca", []),
    ("", None, []),
])
def test_parse_tool_calls(answer, content, calls):
    got_content, got_calls = parse_tool_calls(answer, NAMES)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    assert all(c.id.startswith("call_") for c in got_calls) and len({c.id for c in got_calls}) == len(got_calls)


def test_arguments_are_serialized_json_objects_as_openai_sends_them():
    _, [call] = parse_tool_calls('<tool_call>{"name": "get_time", "arguments": {"zone": "Zürich"}}</tool_call>',
                                 NAMES)
    assert call.to_openai() == {"id": call.id, "type": "function",
                                "function": {"name": "get_time", "arguments": '{"zone": "Zürich"}'}}


REPLIES = ["  Let me see.\n" + CALL + "\n  then <tool_c" + "all>" + '{"name": "get_time", "arguments": {}}</tool_call>',
           "a <tool_call>{bad}</tool_call> b " + CALL + " <tool_call> open",
           "<tool<tool_call>" + CALL[len("<tool_call>"):] + "</tool_call> x \n"]


@pytest.mark.parametrize("reply", REPLIES)
def test_streaming_in_any_pieces_gives_the_whole_parse(reply):
    whole_content, whole_calls = parse_tool_calls(reply, NAMES)
    whole = [whole_content or ""] + [(c.name, c.arguments) for c in whole_calls]
    splits = [[reply[i:i + 1] for i in range(len(reply))]]  # one character at a time
    splits += [[reply[:i], reply[i:j], reply[j:]] for i, j in itertools.combinations(range(0, len(reply), 7), 2)]
    for pieces in splits:
        stream = ToolCallStream(NAMES)
        parts = [p for piece in pieces for p in stream.feed(piece)] + stream.finish()
        got = ["".join(p for p in parts if isinstance(p, str))] + [(p.name, p.arguments) for p in parts
                                                                    if not isinstance(p, str)]
        assert got == whole, pieces


def test_content_inside_a_possible_block_is_held_back():
    stream = ToolCallStream(NAMES)
    assert stream.feed("Sure. <tool") == ["Sure."]
    assert stream.feed('_call>\n{"name": "get_time", ') == []
    [call] = stream.feed('"arguments": {}}\n</tool_call>')
    assert call.name == "get_time"
    assert stream.feed(" done ") == ["  done"] and stream.finish() == []  # the space held after "Sure."
