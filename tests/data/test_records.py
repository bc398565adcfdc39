"""read_records on small files written here in every format."""

import csv
import gzip
import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1kit.data import read_records
from r1kit.errors import R1kitError

ROWS = [{"question": "What is 2+3?", "answer": "5"}, {"question": "Sort 3,1.", "answer": "1,3"}]


def test_jsonl_and_gzip(tmp_path):
    text = "\n".join(json.dumps(r) for r in ROWS) + "\n\n"  # a trailing blank line is fine
    (tmp_path / "a.jsonl").write_text(text)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(text)
    assert read_records(tmp_path / "a.jsonl") == ROWS
    assert read_records(tmp_path / "a.jsonl.gz") == ROWS


def test_json_list_and_wrapped(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    assert read_records(tmp_path / "a.json") == ROWS
    assert read_records(str(tmp_path / "b.json")) == ROWS


def test_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    assert read_records(tmp_path / "a.parquet") == ROWS


def test_csv(tmp_path):
    with open(tmp_path / "a.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(ROWS)
    assert read_records(tmp_path / "a.csv") == ROWS


def test_fmt_overrides_suffix(tmp_path):
    (tmp_path / "data.txt").write_text(json.dumps(ROWS[0]) + "\n")
    assert read_records(tmp_path / "data.txt", fmt="jsonl") == ROWS[:1]
    with pytest.raises(R1kitError, match="data.txt"):
        read_records(tmp_path / "data.txt")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(R1kitError, match="nothing.jsonl"):
        read_records(tmp_path / "nothing.jsonl")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(R1kitError, match=r"bad\.jsonl:3: malformed"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(R1kitError, match=r"list\.jsonl:2: expected a JSON object"):
        read_records(tmp_path / "list.jsonl")


def test_malformed_json_and_csv(tmp_path):
    (tmp_path / "bad.json").write_text('[{"a": 1},\n 3]')
    with pytest.raises(R1kitError, match="item 1"):
        read_records(tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(R1kitError, match=r"bad\.csv:3"):
        read_records(tmp_path / "bad.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(R1kitError, match=r"bad\.parquet"):
        read_records(tmp_path / "bad.parquet")


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_id_uses_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return ROWS

    _fake_datasets(monkeypatch, load_dataset)
    assert read_records("hf:owner/name:test") == ROWS
    assert read_records("hf:owner/name") == ROWS
    assert calls == [("owner/name", "test"), ("owner/name", "train")]


def test_hf_failure_is_a_clear_error(monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError("offline")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(R1kitError, match="owner/name.*offline"):
        read_records("hf:owner/name")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(R1kitError, match="pip install datasets"):
        read_records("hf:owner/name")
