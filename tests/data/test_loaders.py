"""Chat and task loaders: every format, field renaming, and row errors that name the row and the field."""

import csv
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1kit.data import FieldMap, load_chat_dataset, load_task_dataset, make_task_set
from r1kit.data.loaders import RowError
from r1kit.errors import R1kitError


def _write(path, rows):
    """Write rows in the format the suffix names; CSV cells that are lists/dicts become JSON text."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        keys = sorted({k for r in rows for k in r})
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()}
                )
    return path


SUFFIXES = [".jsonl", ".json", ".parquet", ".csv"]

CHAT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "5", "reasoning": "2+3=5."},
        ]
    },
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_chat_messages_every_format(tmp_path, suffix):
    got = load_chat_dataset(_write(tmp_path / f"chat{suffix}", CHAT_ROWS))
    assert got[0]["messages"] == [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5", "reasoning": "2+3=5."},
    ]
    assert got[1]["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_chat_prompt_completion_every_format(tmp_path, suffix):
    rows = [
        {"prompt": "What is 2+3?", "completion": "5", "reasoning": "2+3=5."},
        {"prompt": "Sort 3,1.", "completion": "<think>1 then 3.</think> 1,3", "reasoning": None},
    ]
    got = load_chat_dataset(_write(tmp_path / f"pc{suffix}", rows))
    assert got[0]["messages"] == [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5", "reasoning": "2+3=5."},
    ]
    # an inline <think> block becomes the reasoning
    assert got[1]["messages"][1] == {"role": "assistant", "content": "1,3", "reasoning": "1 then 3."}


def test_chat_conversational_prompt_completion_and_aliases():
    rows = [
        {
            "prompt": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"}],
            "completion": [{"from": "gpt", "value": "4"}],
        }
    ]
    got = load_chat_dataset(rows, fields=FieldMap(role="from", content="value"))
    assert got == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
    ]


def test_chat_renamed_columns_and_system(tmp_path):
    rows = [{"instruction": "Say hi", "output": "hi", "thoughts": "easy", "sys": "You are terse."}]
    fields = FieldMap(prompt="instruction", completion="output", reasoning="thoughts", system="sys")
    got = load_chat_dataset(_write(tmp_path / "r.jsonl", rows), fields=fields)
    assert got[0]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi", "reasoning": "easy"},
    ]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": "q", "completion": ""}, r"completion\[0\]\.content' is empty"),
        ({"prompt": "q", "completion": "   "}, "is empty"),
        ({"prompt": "q"}, "missing field 'completion'"),
        ({"completion": "a"}, "missing field 'prompt'"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no assistant message"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}, "robot"),
        ({"prompt": "q", "completion": "<think>only thinking</think>"}, "empty answer"),
        ({"text": "raw"}, "needs 'messages'"),
    ],
)
def test_chat_bad_row_named(tmp_path, row, problem):
    path = _write(tmp_path / "bad.jsonl", [CHAT_ROWS[0], row])
    with pytest.raises(RowError, match=rf"bad\.jsonl row 1: .*{problem}"):
        load_chat_dataset(path)


def test_skip_drops_and_logs_count(tmp_path, caplog):
    rows = [CHAT_ROWS[0], {"prompt": "q", "completion": ""}, CHAT_ROWS[1], {"prompt": "q"}]
    path = _write(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        got = load_chat_dataset(path, on_error="skip")
    assert len(got) == 2
    assert "skipped 2 of 4 rows" in caplog.text and "row 1" in caplog.text and "row 3" in caplog.text
    with pytest.raises(R1kitError, match="on_error"):
        load_chat_dataset(path, on_error="ignore")


TASK_ROWS = [
    {"id": "m1", "question": "What is 2+3?", "answer": 5},
    {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo"], "answer": "B"},
    {"question": "Largest?", "choices": ["3", "9", "5"], "answer": 1},
    {"question": "Color of sky?", "choices": ["green", "blue"], "answer": "blue"},
    {"question": "Echo the input.", "tests": [{"input": "hi\n", "output": "hi\n"}]},
    {"question": "Write add(a, b).", "tests": "assert add(1, 2) == 3", "entry_point": "add"},
]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_task_kinds_every_format(tmp_path, suffix):
    rows = [
        {k: r.get(k) for k in ["id", "question", "answer", "choices", "tests", "entry_point"]}
        for r in TASK_ROWS
    ]
    if suffix == ".parquet":  # one Arrow type per column: answers as text, tests as JSON text
        rows = [{**r, "answer": None if r["answer"] is None else str(r["answer"])} for r in rows]
        rows = [
            {**r, "tests": json.dumps(r["tests"]) if isinstance(r["tests"], list) else r["tests"]}
            for r in rows
        ]
    got = load_task_dataset(_write(tmp_path / f"tasks{suffix}", rows))
    assert [g["kind"] for g in got] == ["math", "choice", "choice", "choice", "code", "code"]
    assert got[0]["id"] == "m1" and got[0]["answer"] == "5"
    assert got[1]["id"] == "tasks-1"  # no id column value: file stem and row index
    assert got[1]["choices"] == ["Rome", "Paris", "Oslo"] and got[1]["answer"] == "B"
    assert got[2]["answer"] == "B"  # 0-based index 1
    assert got[3]["answer"] == "B"  # the choice text
    assert got[4]["tests"] == [{"input": "hi\n", "output": "hi\n"}]
    assert got[5]["tests"] == "assert add(1, 2) == 3" and got[5]["entry_point"] == "add"


def test_task_renamed_fields_and_passthrough():
    rows = [{"problem": "Solve 2x+1=7.", "gold": "3", "source": "hand", "steps": "2x=6. x=3."}]
    got = load_task_dataset(rows, fields=FieldMap(question="problem", answer="gold", solution="steps"))
    assert got == [
        {
            "source": "hand",
            "id": "row-0",
            "kind": "math",
            "question": "Solve 2x+1=7.",
            "answer": "3",
            "solution": "2x=6. x=3.",
        }
    ]


def test_saved_synthetic_set_round_trips(tmp_path):
    examples = make_task_set("countdown", 5, level=1)
    path = tmp_path / "countdown.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    got = load_task_dataset(path, kind="math")
    for g, e in zip(got, examples):
        assert (g["id"], g["question"], g["answer"], g["solution"]) == (
            e["id"],
            e["question"],
            e["answer"],
            e["solution"],
        )
        assert g["numbers"] == e["numbers"] and g["target"] == e["target"]


@pytest.mark.parametrize(
    ("row", "kind", "problem"),
    [
        ({"question": "q"}, None, "missing field 'answer'"),
        ({"question": "q", "answer": ""}, None, "field 'answer' is empty"),
        ({"answer": "3"}, None, "missing field 'question'"),
        ({"question": "q", "choices": ["a"], "answer": "A"}, None, "at least 2 choices"),
        ({"question": "q", "choices": ["a", "b"], "answer": "C"}, None, "'answer' = 'C'"),
        ({"question": "q", "choices": ["a", "b"]}, None, "missing field 'answer'"),
        ({"question": "q", "tests": []}, None, "field 'tests'"),
        ({"question": "q", "tests": [{"input": "1"}]}, None, r"tests\[0\]"),
        ({"question": "q", "answer": "3"}, "code", "missing field 'tests'"),
    ],
)
def test_task_bad_row_named(tmp_path, row, kind, problem):
    good = {"question": "ok", "answer": "1"} if kind is None else {"question": "ok", "tests": "assert True"}
    path = _write(tmp_path / "t.jsonl", [good, row])
    with pytest.raises(RowError, match=rf"t\.jsonl row 1: .*{problem}"):
        load_task_dataset(path, kind=kind)
    assert len(load_task_dataset(path, kind=kind, on_error="skip")) == 1


def test_bad_source_and_kind(tmp_path):
    with pytest.raises(R1kitError, match="missing.jsonl"):
        load_task_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(R1kitError, match="kind"):
        load_task_dataset([], kind="essay")
    with pytest.raises(R1kitError, match="list of dicts"):
        load_chat_dataset(42)
