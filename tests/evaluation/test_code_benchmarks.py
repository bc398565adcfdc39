"""Code benchmarks graded by the real rewards sandbox (few, small tests), and LiveCodeBench test decoding."""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import zlib

import pytest

from r1kit.errors import R1kitError
from r1kit.evaluation import evaluate
from r1kit.evaluation.layouts import decode_lcb_tests
from r1kit.io import read_jsonl

ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def _humaneval(tmp_path):
    rows = [
        {"task_id": "HumanEval/0", "prompt": ADD_PROMPT, "entry_point": "add", "test": ADD_TEST,
         "canonical_solution": "    return a + b\n"},
        {"task_id": "HumanEval/1", "prompt": "def neg(x):\n", "entry_point": "neg",
         "test": "def check(candidate):\n    assert candidate(4) == -4\n", "canonical_solution": "    return -x\n"},
    ]
    path = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_humaneval_correct_and_incorrect_solutions(tmp_path, fake, tok):
    replies = {
        "add": "```python\ndef add(a, b):\n    return a - b\n```",  # wrong
        "neg": "Here it is:\n```python\n    return -x\n```",  # body only: completed by the prompt's signature
    }

    def respond(text, seed):
        return next(v for k, v in replies.items() if f"def {k}(" in text)

    s = evaluate(None, tok, "humaneval", data=str(_humaneval(tmp_path)), samples=1, generate_fn=fake(respond))
    assert s["pass@1"] == pytest.approx(0.5)
    assert "cons@1" not in s  # programs are not voted on
    replies["add"] = "```python\ndef add(a, b):\n    return a + b\n```"
    s = evaluate(None, tok, "humaneval", data=str(_humaneval(tmp_path)), samples=1, generate_fn=fake(respond))
    assert s["pass@1"] == 1.0


def _b64_zlib(obj) -> str:
    return base64.b64encode(zlib.compress(json.dumps(obj).encode())).decode()


def test_livecodebench_stdin_private_and_functional_tests(tmp_path, fake, tok):
    rows = [
        {"question_id": "sum2", "question_content": "Read two integers and print their sum.", "starter_code": "",
         "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
         "private_test_cases": _b64_zlib([{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]),
         "metadata": "{}"},
        {"question_id": "lc1", "question_content": "Add two numbers.",
         "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
         "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
         "private_test_cases": "[]", "metadata": json.dumps({"func_name": "add"})},
    ]
    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    programs = {
        # passes the public test only: the private test decides
        "Read two": "```python\nprint(3)\n```",
        "Add two": "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```",
    }

    def respond(text, seed):
        return next(v for k, v in programs.items() if k in text)

    gen = fake(respond)
    s = evaluate(None, tok, "livecodebench", data=str(path), samples=1, out_dir=tmp_path / "o", generate_fn=gen)
    verdicts = {r["problem_id"]: r["correct"] for r in read_jsonl(tmp_path / "o" / "samples.jsonl")}
    assert verdicts == {"sum2": False, "lc1": True} and s["pass@1"] == pytest.approx(0.5)
    programs["Read two"] = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert evaluate(None, tok, "livecodebench", data=str(path), samples=1, generate_fn=fake(respond))["pass@1"] == 1
    prompts = [c["prompts"][i][0]["content"] for c in gen.calls for i in range(len(c["prompts"]))]
    assert any("Read the inputs from stdin" in p for p in prompts)
    assert any("starter code" in p and "class Solution" in p for p in prompts)


def test_decode_lcb_tests_forms():
    cases = [{"input": "1", "output": "1", "testtype": "stdin"}]
    assert decode_lcb_tests(json.dumps(cases)) == cases
    assert decode_lcb_tests(cases) == cases
    assert decode_lcb_tests(_b64_zlib(cases)) == cases
    assert decode_lcb_tests("") == []
    # the official release pickles the JSON string: recognised, never unpickled
    pickled = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
    assert decode_lcb_tests(pickled) is None
    with pytest.raises(R1kitError, match="livecodebench"):
        decode_lcb_tests("not json and not base64 !!")
