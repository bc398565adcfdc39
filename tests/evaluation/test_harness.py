"""evaluate() with a fake model whose answers are known: exact scores on every benchmark layout."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import re

import pytest

from r1kit.errors import R1kitError
from r1kit.evaluation import evaluate, sample_seed
from r1kit.io import read_jsonl


def write_jsonl(path, rows, *, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def by_sample(answers: dict[str, list], seed: int = 0):
    """respond(text, seed) giving answers[problem_id][sample_index], found through the sample's seed."""
    index = {sample_seed(seed, pid, j): (pid, j) for pid, rows in answers.items() for j in range(len(rows))}

    def respond(text, s):
        pid, j = index[s]
        return answers[pid][j]

    return respond


def scores(summary):
    return {k: v for k, v in summary.items() if k.startswith(("pass@", "cons@"))}


# ---- math layouts -------------------------------------------------------------------------------------


def test_math500_scores_and_outputs(tmp_path, fake, tok):
    data = write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "Half of one?", "answer": "\\frac{1}{2}", "unique_id": "test/a/1.json", "solution": ""},
        {"problem": "Five plus five?", "answer": "10", "unique_id": "test/a/2.json", "solution": ""},
    ])
    gen = fake(by_sample({
        # 3 of 4 correct (three spellings of 1/2); majority 1/2 -> cons correct
        "test/a/1.json": ["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac12}"],
        # 1 of 4 correct; majority 7 -> cons wrong; the last reply has no answer
        "test/a/2.json": ["\\boxed{7}", "\\boxed{7}", "The sum is \\boxed{10}.", "I give up"],
    }))
    out = tmp_path / "out"
    s = evaluate(None, tok, "math500", data=str(data), samples=4, batch_size=3, out_dir=out, model_id="fake",
                 generate_fn=gen)
    assert s["pass@1"] == pytest.approx(0.5) and s["pass@1_stderr"] == pytest.approx(0.25)
    assert s["pass@2"] == pytest.approx(0.75)  # (1 + (1 - 3/6)) / 2
    assert s["pass@4"] == pytest.approx(1.0)
    assert s["cons@4"] == pytest.approx(0.5)
    assert s["mean_tokens"] == 10 and s["truncation_rate"] == 0
    # R1 protocol defaults reach the engine; every prompt ends with R1's instruction
    assert {c["temperature"] for c in gen.calls} == {0.6} and {c["top_p"] for c in gen.calls} == {0.95}
    assert [len(c["prompts"]) for c in gen.calls] == [3, 3, 2]
    first = gen.calls[0]["prompts"][0][0]["content"]
    assert first == "Half of one?\nPlease reason step by step, and put your final answer within \\boxed{}."
    # outputs
    records = list(read_jsonl(out / "samples.jsonl"))
    assert len(records) == 8
    r = next(r for r in records if r["problem_id"] == "test/a/2.json" and r["sample"] == 2)
    assert (r["extracted"], r["gold"], r["correct"], r["tokens"], r["finish_reason"]) == ("10", "10", True, 10, "stop")
    assert r["reasoning"] == "thinking" and r["answer"] == "The sum is \\boxed{10}."
    assert json.loads((out / "summary.json").read_text()) == s
    report = (out / "report.md").read_text()
    assert "97.3" in report and "OpenAI-o1-1217" in report and "DeepSeek-R1-Distill-Qwen-1.5B" in report
    assert (out / "accuracy_vs_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aime24_zero_padded_gold(tmp_path, fake, tok):
    data = write_jsonl(tmp_path / "aime.jsonl", [
        {"id": 60, "problem": "P1", "answer": "025", "solution": "", "url": ""},
        {"id": 61, "problem": "P2", "answer": "204", "solution": "", "url": ""},
    ])
    gen = fake(by_sample({"60": ["\\boxed{25}", "\\boxed{025}"], "61": ["\\boxed{240}", "\\boxed{204}"]}))
    s = evaluate(None, tok, "aime24", data=str(data), samples=2, generate_fn=gen)
    assert s["pass@1"] == pytest.approx(0.75) and s["samples"] == 2
    assert s["published"]["DeepSeek-R1"] == {"pass@1": 79.8}
    assert s["published"]["DeepSeek-R1-Distill-Qwen-7B"] == {"pass@1": 55.5, "cons@64": 83.3}


def test_gsm8k_hash_answers_with_commas(tmp_path, fake, tok):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "How many?", "answer": "So 1000+234 = 1234\n#### 1,234"},
        {"question": "How few?", "answer": "#### 3"},
    ])
    gen = fake(by_sample({"0": ["\\boxed{1234}", "\\boxed{1,234}"], "1": ["\\boxed{4}", "\\boxed{4}"]}))
    s = evaluate(None, tok, "gsm8k", data=str(data), samples=2, generate_fn=gen)
    assert s["pass@1"] == pytest.approx(0.5) and s["cons@2"] == pytest.approx(0.5)


# ---- multiple choice ----------------------------------------------------------------------------------


def _letter_of(text: str, choice: str) -> str:
    return re.search(r"^([A-D])\) " + re.escape(choice) + "$", text, re.MULTILINE).group(1)


def test_gpqa_csv_shuffled_choices(tmp_path, fake, tok):
    path = tmp_path / "gpqa_diamond.csv"
    rows = [{"Record ID": f"rec{i}", "Question": f"Q{i}?", "Correct Answer": f"right{i}",
             "Incorrect Answer 1": f"w1-{i}", "Incorrect Answer 2": f"w2-{i}", "Incorrect Answer 3": f"w3-{i}"}
            for i in range(6)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    seen = []

    def respond(text, seed):
        i = re.search(r"Q(\d)\?", text).group(1)
        right = _letter_of(text, f"right{i}")
        seen.append(right)
        wrong = "ABCD"[("ABCD".index(right) + 1) % 4]
        # odd problems answer wrongly; even ones correctly
        return f"Reasoning...\nAnswer: {right if int(i) % 2 == 0 else wrong}"

    s = evaluate(None, tok, "gpqa-diamond", data=str(path), samples=1, generate_fn=fake(respond))
    assert s["pass@1"] == pytest.approx(0.5)
    assert len(set(seen)) > 1  # the correct answer is not always in the same position
    from r1kit.evaluation import get_benchmark, load_problems

    # the prompt follows the lettered multiple-choice instructions, and gold is the correct text's letter

    p = load_problems(get_benchmark("gpqa-diamond"), data=str(path), seed=0)[0]
    assert "'Answer: $LETTER'" in p.prompt and "one of ABCD" in p.prompt and p.prompt.count(") ") >= 4
    assert p.gold == _letter_of(p.prompt, "right0")
    # the order is a function of the seed
    orders = [[q.gold for q in load_problems(get_benchmark("gpqa-diamond"), data=str(path), seed=sd)]
              for sd in (0, 0, 1)]
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_mmlu_jsonl_and_parquet_layouts(tmp_path, fake, tok):
    rows = [
        {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"},
        {"question": "Capital of France?", "choices": ["Paris", "Rome", "Oslo", "Bern"], "answer": "A",
         "subject": "geo"},
    ]
    jsonl = write_jsonl(tmp_path / "mmlu.jsonl", rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "test.parquet"  # cais/mmlu layout: answer is an int index
    pq.write_table(pa.Table.from_pylist([{**rows[0]}, {**rows[1], "answer": 0}]), parquet)
    answers = {"2+2?": "Answer: B", "Capital of France?": "The answer is (C)."}  # right, wrong

    def respond(text, seed):
        return next(v for q, v in answers.items() if q in text)

    for data in (jsonl, parquet):
        s = evaluate(None, tok, "mmlu", data=str(data), samples=1, generate_fn=fake(respond))
        assert s["pass@1"] == pytest.approx(0.5), data
        assert s["published"]["DeepSeek-R1"] == {"pass@1": 90.8}


# ---- user benchmark and synthetic tasks ---------------------------------------------------------------


def test_user_yaml_benchmark(tmp_path, fake, tok):
    write_jsonl(tmp_path / "capitals.jsonl", [{"qid": "fr", "q": "Capital of France?", "target": "Paris"},
                                              {"qid": "it", "q": "Capital of Italy?", "target": "Rome"}])
    spec = tmp_path / "capitals.yaml"
    spec.write_text("name: capitals\ndata: capitals.jsonl\ngrader: exact\nsamples: 2\n"
                    "fields: {id: qid, question: q, answer: target}\n"
                    "template: \"Q: {question}\\nPut the answer in \\\\boxed{}.\"\n")
    gen = fake(by_sample({"fr": ["\\boxed{paris}", "\\boxed{Lyon}"], "it": ["\\boxed{Rome}", "\\boxed{Rome.}"]}))
    s = evaluate(None, tok, str(spec), generate_fn=gen)
    assert s["benchmark"] == "capitals" and s["samples"] == 2
    assert s["pass@1"] == pytest.approx(0.75) and s["published"] == {}
    assert gen.calls[0]["prompts"][0][0]["content"] == "Q: Capital of France?\nPut the answer in \\boxed{}."


def test_user_spec_errors_name_the_field(tmp_path):
    from r1kit.evaluation import load_spec

    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x.jsonl\ngrader: vibes\n")
    with pytest.raises(R1kitError, match="grader must be one of"):
        load_spec(bad)
    bad.write_text("data: x.jsonl\ngrader: math\nfields: {prompt: q}\n")
    with pytest.raises(R1kitError, match="fields"):
        load_spec(bad)
    bad.write_text("data: x.jsonl\ngrader: math\ntemperature: 0.6\n")
    with pytest.raises(R1kitError, match="unknown key"):
        load_spec(bad)


def _addition(text: str) -> int:
    a, b = re.search(r"What is (\d+)\+(\d+)\?", text).groups()
    return int(a) + int(b)


def test_synthetic_addition(fake, tok):
    # sample 0 right, sample 1 off by one: pass@1 = 0.5, pass@2 = 1, cons@2 = 1 (tie -> first answer)
    index = {}

    def respond(text, seed):
        return f"\\boxed{{{_addition(text) + index[seed]}}}"

    from r1kit.data import make_task_set

    examples = make_task_set("addition", 5, seed=0, level=2, split="test")
    index.update({sample_seed(0, ex["id"], j): j for ex in examples for j in range(2)})
    s = evaluate(None, tok, "synthetic:addition", limit=5, samples=2, generate_fn=fake(respond))
    assert s["problems"] == 5
    assert (s["pass@1"], s["pass@2"], s["cons@2"]) == (pytest.approx(0.5), 1.0, 1.0)


def _solve_countdown(items: list[tuple[str, int]], target: int) -> str | None:
    """Any expression over all items reaching target: combine two items, recurse (all binary trees)."""
    if len(items) == 1:
        return items[0][0] if items[0][1] == target else None
    for i, j in itertools.permutations(range(len(items)), 2):
        (ea, a), (eb, b) = items[i], items[j]
        rest = [x for k, x in enumerate(items) if k not in (i, j)]
        for expr, value in ((f"({ea}+{eb})", a + b), (f"({ea}-{eb})", a - b), (f"({ea}*{eb})", a * b)):
            found = _solve_countdown([*rest, (expr, value)], target)
            if found:
                return found
    return None


def test_synthetic_countdown_accepts_any_valid_expression(fake, tok):
    from r1kit.data import make_task_set

    examples = make_task_set("countdown", 4, seed=0, level=2, split="test")
    sample_of = {sample_seed(0, ex["id"], j): j for ex in examples for j in range(2)}

    def respond(text, seed):  # sample 0: an expression found independently of the reference; sample 1: wrong
        target, nums = re.search(r"Make (-?\d+) from ([\d,]+)", text).groups()
        expr = _solve_countdown([(n, int(n)) for n in nums.split(",")], int(target))
        return f"\\boxed{{{expr}}}" if sample_of[seed] == 0 else "\\boxed{1+1}"

    s = evaluate(None, tok, "countdown", limit=4, samples=2, generate_fn=fake(respond))
    assert s["benchmark"] == "synthetic:countdown"
    assert (s["pass@1"], s["pass@2"]) == (0.5, 1.0)


# ---- protocol, cache and resume -----------------------------------------------------------------------


def _seeded_reply(reply):
    """Deterministic per sample (through its seed): mixed correctness, lengths and truncation."""

    def respond(text, seed):
        right = _addition(text)
        answer = right if seed % 3 else right + 1
        return reply(f"\\boxed{{{answer}}}", tokens=5 + seed % 50, finish="length" if seed % 7 == 0 else "stop")

    return respond


def test_resume_after_interruption_matches_uninterrupted(tmp_path, fake, tok, reply):
    kw = {"limit": 6, "samples": 4, "batch_size": 5}
    full = evaluate(None, tok, "addition", out_dir=tmp_path / "a", generate_fn=fake(_seeded_reply(reply)), **kw)

    crashing = fake(_seeded_reply(reply), fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(None, tok, "addition", out_dir=tmp_path / "b", generate_fn=crashing, **kw)
    assert len(list(read_jsonl(tmp_path / "b" / "samples.jsonl"))) == 10  # two batches were saved

    resumed_gen = fake(_seeded_reply(reply))
    resumed = evaluate(None, tok, "addition", out_dir=tmp_path / "b", generate_fn=resumed_gen, **kw)
    assert sum(len(c["prompts"]) for c in resumed_gen.calls) == 24 - 10
    assert resumed["run"]["cached"] == 10 and resumed["run"]["generated"] == 14
    assert {k: v for k, v in resumed.items() if k != "run"} == {k: v for k, v in full.items() if k != "run"}
    assert 0 < full["truncation_rate"] < 1 and 0 < full["pass@1"] < 1

    # a finished evaluation is not recomputed
    never = fake(_seeded_reply(reply), fail_after=0)
    again = evaluate(None, tok, "addition", out_dir=tmp_path / "b", generate_fn=never, **kw)
    assert again["run"]["generated"] == 0 and scores(again) == scores(full)


def test_samples_do_not_depend_on_batching_and_k_reuses_cache(tmp_path, fake, tok, reply):
    one = evaluate(None, tok, "addition", limit=3, samples=2, batch_size=1, generate_fn=fake(_seeded_reply(reply)))
    many = evaluate(None, tok, "addition", limit=3, samples=2, batch_size=4, generate_fn=fake(_seeded_reply(reply)))
    assert {k: v for k, v in one.items() if k != "run"} == {k: v for k, v in many.items() if k != "run"}

    evaluate(None, tok, "addition", limit=3, samples=2, out_dir=tmp_path, generate_fn=fake(_seeded_reply(reply)))
    more = fake(_seeded_reply(reply))
    evaluate(None, tok, "addition", limit=3, samples=4, out_dir=tmp_path, generate_fn=more)
    assert sum(len(c["prompts"]) for c in more.calls) == 3 * 2  # only samples 2 and 3 are new
    # other settings are other cache entries
    hotter = fake(_seeded_reply(reply))
    evaluate(None, tok, "addition", limit=3, samples=2, temperature=1.0, out_dir=tmp_path, generate_fn=hotter)
    assert sum(len(c["prompts"]) for c in hotter.calls) == 6


def test_missing_data_names_benchmark_layout_and_source(monkeypatch, tmp_path, tok):
    monkeypatch.delenv("R1KIT_DATA", raising=False)
    with pytest.raises(R1kitError) as e:
        evaluate(None, tok, "math500")
    msg = str(e.value)
    assert "math500" in msg and "problem, answer, unique_id" in msg and "prm800k" in msg and "--data" in msg


def test_data_found_under_r1kit_data(monkeypatch, tmp_path, fake, tok):
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "q", "answer": "#### 2"}])
    monkeypatch.setenv("R1KIT_DATA", str(tmp_path))
    s = evaluate(None, tok, "gsm8k", samples=1, generate_fn=fake(lambda t, s: "\\boxed{2}"))
    assert s["pass@1"] == 1.0


def test_bad_settings_are_config_errors(tok):
    with pytest.raises(R1kitError, match="top_p"):
        evaluate(None, tok, "addition", top_p=0.0)
    with pytest.raises(R1kitError, match="EvalConfig"):
        evaluate(None, tok, "addition", temprature=0.6)


# ---- a real model on the continuous engine --------------------------------------------------------------


def test_continuous_engine_matches_batched_generate_and_retraining_invalidates_the_cache(tmp_path):
    """With no generate_fn an r1kit model samples every pending pair on one engine, writing each record as it
    finishes: the records equal the batched `r1kit.generate` path's (seeded sampling). The cache key carries a
    fingerprint of the weights: the same model resumes from the cache, a model retrained into the same
    directory (same model_id, other weights) generates afresh."""
    import torch

    import r1kit
    from r1kit.tokenizer import toy_tokenizer

    model = r1kit.load_model("toy-moe").eval()
    tok = toy_tokenizer()
    kw = {"limit": 3, "samples": 3, "batch_size": 4, "max_new_tokens": 12, "temperature": 1.0, "model_id": "m"}

    def records(out):
        rows = read_jsonl(out / "samples.jsonl")
        return sorted(({k: v for k, v in r.items() if k != "weights"} for r in rows),
                      key=lambda r: (r["problem_id"], r["sample"]))

    batched = evaluate(model, tok, "addition", out_dir=tmp_path / "b", generate_fn=r1kit.generate, **kw)
    continuous = evaluate(model, tok, "addition", out_dir=tmp_path / "c", **kw)
    assert continuous["run"]["generated"] == 9
    assert records(tmp_path / "b") == records(tmp_path / "c")
    assert {k: v for k, v in batched.items() if k != "run"} == {k: v for k, v in continuous.items() if k != "run"}

    again = evaluate(model, tok, "addition", out_dir=tmp_path / "c", **kw)
    assert again["run"] == {**again["run"], "generated": 0, "cached": 9}
    with torch.no_grad():
        model.layers[0].mlp.gate_proj.weight.add_(1e-3)  # "retrained": same directory and model_id
    retrained = evaluate(model, tok, "addition", out_dir=tmp_path / "c", **kw)
    assert retrained["run"]["generated"] == 9 and retrained["run"]["cached"] == 0
