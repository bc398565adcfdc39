"""`r1kit eval` end to end with a fake model, tokenizer and generate (no weights, no network)."""

from __future__ import annotations

import json

import torch

import r1kit
from r1kit.cli import main


def test_eval_json_and_table(tmp_path, monkeypatch, capsys, fake, tok):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n"
                    + json.dumps({"question": "2+2?", "answer": "#### 4"}) + "\n")
    gen = fake(lambda text, seed: "\\boxed{2}")  # right on the first problem only
    monkeypatch.setattr(r1kit, "load_model", lambda src, **kwargs: torch.nn.Identity(), raising=False)
    monkeypatch.setattr(r1kit, "load_tokenizer", lambda src: tok, raising=False)
    monkeypatch.setattr(r1kit, "generate", gen, raising=False)
    out = tmp_path / "out"
    argv = ["eval", "--model", "fake-model", "--benchmark", "gsm8k", "--data", str(data), "--samples", "3",
            "--max-new-tokens", "64", "--batch-size", "4", "--out", str(out), "--no-progress"]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pass@1"] == 0.5 and summary["samples"] == 3 and summary["model"] == "fake-model"
    assert summary["settings"]["max_new_tokens"] == 64 and gen.calls[0]["max_new_tokens"] == 64
    assert [len(c["prompts"]) for c in gen.calls] == [4, 2]
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()

    assert main(argv) == 0  # cached: a table, nothing regenerated
    table = capsys.readouterr().out
    assert "pass@1" in table and "50.0 ± 50.0" in table and len(gen.calls) == 2


def test_other_precision_does_not_reuse_cached_samples(tmp_path, monkeypatch, capsys, fake, tok):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    gen = fake(lambda text, seed: "\\boxed{2}")
    monkeypatch.setattr(r1kit, "load_model", lambda src, **kwargs: torch.nn.Identity(), raising=False)
    monkeypatch.setattr(r1kit, "load_tokenizer", lambda src: tok, raising=False)
    monkeypatch.setattr(r1kit, "generate", gen, raising=False)
    argv = ["eval", "--model", "m", "--benchmark", "gsm8k", "--data", str(data), "--samples", "2",
            "--out", str(tmp_path / "out"), "--no-progress", "--json"]
    assert main(argv) == 0 and main(argv) == 0
    assert len(gen.calls) == 1  # the rerun came from the cache
    assert main([*argv, "--bf16-matmuls"]) == 0
    assert len(gen.calls) == 2 and gen.calls[1].get("matmul_dtype") == torch.bfloat16


def test_eval_user_errors_exit_2(tmp_path, capsys):
    assert main(["eval", "--model", "m", "--benchmark", "no-such-bench"]) == 2
    assert "unknown benchmark 'no-such-bench'" in capsys.readouterr().err
    assert main(["eval", "--model", "m", "--benchmark", "aime24", "--data", str(tmp_path / "x.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
