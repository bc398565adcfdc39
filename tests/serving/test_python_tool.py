"""`r1kit serve --tools python`: the interpreter runs inside the reasoning, its output streams as reasoning."""

import openai

from r1kit.tools.python import TOOL_INSTRUCTIONS, ToolConfig

from .conftest import live_server, replay_engine

# What the model writes; the engine inserts "\n<interpreter>\n42\n</interpreter>\n" after the cell.
MODEL_TEXT = "<code>\nprint(6 * 7)\n</code>", "So 42.\n</think>\nThe answer is 42."


def test_the_interpreter_runs_inside_the_reasoning_streamed_or_not():
    engine = replay_engine(lambda prompt: "".join(MODEL_TEXT), tools=ToolConfig())
    with live_server(engine, default_system=TOOL_INSTRUCTIONS) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x")
        messages = [{"role": "user", "content": "What is 6 times 7?"}]
        reply = client.chat.completions.create(model="toy", messages=messages, max_tokens=400)
        message = reply.choices[0].message
        expected_reasoning = MODEL_TEXT[0] + "\n<interpreter>\n42\n</interpreter>\nSo 42."
        assert message.reasoning_content == expected_reasoning
        assert (message.content, reply.choices[0].finish_reason) == ("The answer is 42.", "stop")
        prompt = engine.model.prompts[-1]
        assert prompt.startswith("<bos><|system|>" + TOOL_INSTRUCTIONS + "<|user|>What is 6 times 7?")

        stream = client.chat.completions.create(model="toy", messages=messages, max_tokens=400, stream=True)
        reasoning, content = "", ""
        for chunk in stream:
            delta = chunk.choices[0].delta if chunk.choices else None
            reasoning += getattr(delta, "reasoning_content", None) or "" if delta else ""
            content += delta.content or "" if delta else ""
        assert (reasoning, content) == (expected_reasoning, "The answer is 42.")


def test_a_request_with_its_own_system_message_keeps_it():
    engine = replay_engine(lambda prompt: "</think>\nok", tools=ToolConfig())
    with live_server(engine, default_system=TOOL_INSTRUCTIONS) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x")
        client.chat.completions.create(model="toy", max_tokens=50, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        assert engine.model.prompts[-1].startswith("<bos><|system|>Be brief.<|user|>hi")
