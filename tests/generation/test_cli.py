"""`r1kit generate` and `r1kit chat` end to end on the toy model: JSON contract, precision flags, user errors."""

import json

import pytest

import r1kit
from r1kit.cli import main


def run_json(capsys, *extra):
    code = main(["generate", "--model", "toy-dense", "--prompt", "12+7=", "--max-new-tokens", "8",
                 "--temperature", "0", "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_generate_json_matches_the_python_api(capsys):
    got = run_json(capsys)
    assert set(got) == {"text", "reasoning", "answer", "finish_reason", "tokens"}
    model, tok = r1kit.load_model("toy-dense").eval(), r1kit.load_tokenizer("toy-dense")
    [expected] = r1kit.generate(model, tok, [[{"role": "user", "content": "12+7="}]], max_new_tokens=8,
                                temperature=0)
    assert (got["text"], got["finish_reason"], got["tokens"]) == (
        expected.text, expected.finish_reason, len(expected.token_ids))


@pytest.mark.parametrize("flags", [["--dtype", "bfloat16"], ["--bf16-matmuls"], ["--quantize", "int8"],
                                   ["--quantize", "int4"]])
def test_generate_precision_flags(capsys, flags):
    got = run_json(capsys, *flags)
    assert got["finish_reason"] in ("stop", "length") and 1 <= got["tokens"] <= 8


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-model", "--prompt", "hi"], "no-such-model"),
    (["--model", "toy-dense", "--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["--model", "toy-dense", "--prompt", "hi", "--top-p", "0"], "top_p"),
    (["--model", "toy-dense", "--prompt", "7" * 5000, "--raw"], "context window"),
])
def test_generate_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_chat_answers_and_exits(monkeypatch, capsys):
    lines = iter(["1+1=", "/reset", "2+2=", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", "toy-dense", "--max-new-tokens", "6", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert "r1kit chat" in out and out.count("\x1b[0m") >= 2  # a reply per question, styles reset after each
