"""evaluate(..., tools=...) runs the interpreter in the continuous engine and reports tool statistics."""

import json
import re

from helpers.replay import ReplayModel

from r1kit.evaluation import evaluate
from r1kit.tokenizer import toy_tokenizer
from r1kit.tools.python import ToolConfig


def test_tool_statistics_against_hand_counts(tmp_path):
    """A model that computes a*b with the tool when 3 divides a (and is right), and guesses 7 otherwise (and is wrong)."""
    def reply(prompt: str) -> str:
        a, b = map(int, re.findall(r"What is (\d+)\*(\d+)\?", prompt)[-1])
        if a % 3 == 0:
            return f"<code>\nprint({a}*{b})\n</code>So that.\n</think>\n\\boxed{{{a * b}}}"
        return "I guess.\n</think>\n\\boxed{7}"

    tok = toy_tokenizer()
    model = ReplayModel(tok, reply)
    # batch_size=1: the harness's engine decodes one request at a time, as the replay model needs
    s = evaluate(model, tok, "synthetic:multiplication", limit=6, samples=1, batch_size=1, temperature=0.0,
                 tools=ToolConfig(), out_dir=tmp_path, model_id="replay")
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    used = [r for r in records if int(re.findall(r"What is (\d+)", r["prompt"])[0]) % 3 == 0]
    assert used and len(used) < len(records)
    for r in records:
        a, b = map(int, re.findall(r"What is (\d+)\*(\d+)\?", r["prompt"])[0])
        if a % 3 == 0:
            [call] = r["tool_calls"]
            assert (call["code"], call["output"], call["error"]) == (f"print({a}*{b})", f"{a * b}\n", None)
            assert f"<interpreter>\n{a * b}\n</interpreter>" in r["reasoning"] and r["correct"]
        else:
            assert "tool_calls" not in r and not r["correct"]
    share = len(used) / len(records)
    assert s["tool_calls_per_reply"] == share and s["tool_error_rate"] == 0.0
    assert (s["accuracy_with_tool"], s["accuracy_without_tool"]) == (1.0, 0.0)
    assert s["pass@1"] == share
    assert s["settings"]["tools"]["timeout"] == 5.0  # a run with other tool settings is another cache entry
