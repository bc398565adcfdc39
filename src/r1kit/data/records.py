"""Read a file of records (one dict per example) whatever its format.

`read_records(path)` returns a list of plain dicts from JSONL (`.jsonl`, `.jsonl.gz`, `.ndjson`), JSON
(a list of objects, or an object holding such a list under "data"/"rows"/"examples"), Parquet (through
pyarrow), CSV (header row; every value is a string) or a Hugging Face `datasets` id written
`hf:owner/name[:split]`. The format comes from the file suffix unless `fmt` names it.

Errors are `R1kitError`s that name the file, and for JSONL the line number, so a user can fix the data.
Left out: streaming (everything is loaded into memory; task and SFT sets here are small), schema checks
(the loaders in `r1kit.data.loaders` check the fields a task needs), and compressed formats other than gzip.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Any

from r1kit.errors import R1kitError

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
_JSON_LIST_KEYS = ("data", "rows", "examples", "records")


def detect_format(path: str | os.PathLike) -> str:
    """The format name of `path` from its suffix (a trailing `.gz` is looked through)."""
    text = str(path)
    if text.startswith("hf:"):
        return "hf"
    suffixes = [s.lower() for s in Path(text).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]
    raise R1kitError(
        f"{text}: cannot tell the format from the file name; use one of "
        f"{', '.join(sorted(_SUFFIXES))} (optionally .gz) or pass fmt= one of {FORMATS}"
    )


def read_records(path: str | os.PathLike, *, fmt: str | None = None) -> list[dict[str, Any]]:
    """Load every record of `path` as a list of dicts.

    Args:
        path: a file path, or `hf:owner/name[:split]` for a Hugging Face dataset (split defaults to "train").
        fmt: one of `FORMATS`; None guesses it from the suffix.
    Raises:
        R1kitError: the file is missing, the format unknown, or a record malformed (the message names the
            file, and the line for JSONL).
    """
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise R1kitError(f"unknown record format {fmt!r}; expected one of {FORMATS}")
    if fmt == "hf":
        return _read_hf(str(path))
    path = Path(path)
    if not path.is_file():
        raise R1kitError(f"data file not found: {path}")
    reader = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet, "csv": _read_csv}[fmt]
    return reader(path)


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise R1kitError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
                if not isinstance(record, dict):
                    raise R1kitError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                records.append(record)
    except (OSError, UnicodeDecodeError) as e:
        raise R1kitError(f"{path}: cannot read as UTF-8 text ({e})") from None
    return records


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        with _open_text(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise R1kitError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise R1kitError(f"{path}: cannot read as UTF-8 text ({e})") from None
    if isinstance(data, dict):
        key = next((k for k in _JSON_LIST_KEYS if isinstance(data.get(k), list)), None)
        if key is None:
            raise R1kitError(f"{path}: expected a JSON list of objects (or an object with a 'data' list)")
        data = data[key]
    if not isinstance(data, list):
        raise R1kitError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise R1kitError(f"{path}: item {i} is a {type(record).__name__}, expected an object")
    return data


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise R1kitError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several unrelated types for a bad file
        raise R1kitError(f"{path}: cannot read as Parquet ({e})") from None


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return []
            records = []
            for i, row in enumerate(reader):
                if None in row:  # DictReader puts surplus cells under the key None
                    raise R1kitError(f"{path}:{reader.line_num}: row {i} has more cells than the header")
                records.append(dict(row))
            return records
    except csv.Error as e:
        raise R1kitError(f"{path}: malformed CSV ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise R1kitError(f"{path}: cannot read as UTF-8 text ({e})") from None


def parse_hf_id(spec: str) -> tuple[str, str]:
    """`hf:owner/name[:split]` -> (name, split); the split defaults to "train"."""
    body = spec.removeprefix("hf:")
    name, _, split = body.partition(":")
    if not name:
        raise R1kitError(f"{spec!r}: expected hf:owner/name[:split]")
    return name, split or "train"


def _read_hf(spec: str) -> list[dict[str, Any]]:
    name, split = parse_hf_id(spec)
    try:
        import datasets
    except ImportError:
        raise R1kitError(f"{spec}: loading a Hugging Face dataset needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 -- offline, unknown name, gated, missing split: all are user-fixable
        raise R1kitError(f"{spec}: cannot load Hugging Face dataset {name!r} split {split!r} ({e})") from None
    return [dict(row) for row in ds]
