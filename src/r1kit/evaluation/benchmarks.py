"""The benchmark registry: what each benchmark reads, how it asks, how it grades, how many samples it draws.

A `Benchmark` ties a data layout (`r1kit.evaluation.layouts`), a prompt template, a grader
(`r1kit.evaluation.grading`) and R1's sample count together. `get_benchmark(name_or_file)` returns a
built-in (aime24, math500, gpqa-diamond, mmlu, livecodebench, gsm8k, humaneval, every synthetic task as
`synthetic:<task>` or `<task>`) or a user benchmark from a small YAML/JSON file; `load_problems` turns it
into rendered `Problem`s.

Data comes from `--data PATH` (JSONL/JSON/Parquet/CSV, or `hf:owner/name:split` when online), else from
`$R1KIT_DATA/<benchmark>/<file>` (the public releases' file names). Nothing is downloaded implicitly.
Leaves out: few-shot prompts (R1 evaluates zero-shot) and per-subject MMLU breakdowns.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r1kit.errors import ConfigError, R1kitError
from r1kit.evaluation import layouts
from r1kit.evaluation.grading import GRADERS
from r1kit.evaluation.layouts import FieldMap, Problem

DATA_ENV = "R1KIT_DATA"

# R1's math instruction (paper section 3.1; also the distilled models' model cards).
MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
# simple-evals' zero-shot chain-of-thought multiple-choice prompt (used for GPQA/MMLU by o1 and R1 reports).
CHOICE_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. Think step by "
    "step before answering.\n\n{question}\n\n{choices}"
)
HUMANEVAL_TEMPLATE = (
    "Complete the following Python function. Reply with the complete function, signature included, in a "
    "single ```python code block.\n\n```python\n{question}```"
)
# LiveCodeBench's own code-generation prompt (lcb_runner/prompts/code_generation.py), zero-shot.
LCB_TEMPLATE = (
    "You will be given a question (problem specification) and will generate a correct Python program that "
    "matches the specification and passes all tests.\n\nQuestion: {question}\n\n{instructions}"
)
# (its two instruction variants, with and without starter code, live in layouts.livecodebench)
CODE_TEMPLATE = "{question}\n\nWrite a Python solution in a single ```python code block."
DEFAULT_TEMPLATES = {
    "math": MATH_TEMPLATE,
    "exact": MATH_TEMPLATE,
    "countdown": MATH_TEMPLATE,
    "choice": CHOICE_TEMPLATE,
    "code": CODE_TEMPLATE,
}

Layout = Callable[[dict, int, int], Problem]  # (row, index, seed) -> Problem without its prompt


@dataclass(frozen=True)
class Benchmark:
    """A benchmark definition.

    `layout` maps one data row to a `Problem`; `template` renders its fields ("{question}", "{choices}",
    ...); `grader` names an entry of `grading.GRADERS`; `samples` is the default k (R1: 64 for AIME,
    fewer for larger sets); `expects` and `source` describe the file and where the public release lives
    (quoted when data is missing); `files` are the file names looked up under $R1KIT_DATA/<name>/;
    `make_rows(n, seed, level)` generates the rows of synthetic tasks instead of reading a file.
    """

    name: str
    layout: Layout
    grader: str
    template: str
    samples: int
    expects: str
    source: str
    files: tuple[str, ...] = ()
    make_rows: Callable[[int, int, int], list[dict]] | None = None
    data: str | None = None  # a user benchmark's data path


def _builtin() -> dict[str, Benchmark]:
    b = [
        Benchmark(
            "aime24",
            layouts.aime24,
            "math",
            MATH_TEMPLATE,
            64,
            'JSONL with id, problem, answer (zero-padded string such as "025")',
            "QwenLM/Qwen2.5-Math evaluation/data/aime24/test.jsonl (30 problems)",
            ("test.jsonl",),
        ),
        Benchmark(
            "math500",
            layouts.math500,
            "math",
            MATH_TEMPLATE,
            4,
            "JSONL with problem, answer, unique_id",
            "openai/prm800k prm800k/math_splits/test.jsonl, or hf:HuggingFaceH4/MATH-500:test",
            ("test.jsonl",),
        ),
        Benchmark(
            "gsm8k",
            layouts.gsm8k,
            "math",
            MATH_TEMPLATE,
            4,
            'JSONL with question, answer (worked solution ending "#### N")',
            "openai/grade-school-math grade_school_math/data/test.jsonl, or hf:openai/gsm8k:main",
            ("test.jsonl",),
        ),
        Benchmark(
            "gpqa-diamond",
            layouts.gpqa,
            "choice",
            CHOICE_TEMPLATE,
            8,
            'CSV with "Question", "Correct Answer", "Incorrect Answer 1".."3" (choices are shuffled)',
            "gpqa_diamond.csv from the password-protected zip at github.com/idavidrein/gpqa "
            "(or the gated Idavidrein/gpqa dataset, config gpqa_diamond, on the Hugging Face hub)",
            ("gpqa_diamond.csv", "test.csv"),
        ),
        Benchmark(
            "mmlu",
            layouts.mmlu,
            "choice",
            CHOICE_TEMPLATE,
            1,
            "JSONL/Parquet with question, choices (list), answer (index or letter), subject",
            "cais/mmlu all/test-00000-of-00001.parquet on the Hugging Face hub",
            ("test.parquet", "test.jsonl"),
        ),
        Benchmark(
            "livecodebench",
            layouts.livecodebench,
            "code",
            LCB_TEMPLATE,
            8,
            "JSONL with question_id, question_content, starter_code, public_test_cases and "
            "private_test_cases (JSON lists of {input, output, testtype}; base64(zlib(JSON)) is read, "
            "pickled blobs are skipped), metadata (func_name for functional tests)",
            "livecodebench/code_generation_lite test*.jsonl on the Hugging Face hub",
            ("test.jsonl",),
        ),
        Benchmark(
            "humaneval",
            layouts.humaneval,
            "code",
            HUMANEVAL_TEMPLATE,
            4,
            "JSONL(.gz) with task_id, prompt, entry_point, test, canonical_solution",
            "openai/human-eval data/HumanEval.jsonl.gz",
            ("HumanEval.jsonl.gz", "test.jsonl"),
        ),
    ]
    return {x.name: x for x in b}


BENCHMARKS: dict[str, Benchmark] = _builtin()


def _synthetic(task: str) -> Benchmark:
    from r1kit.data.tasks import TASKS, make_task_set

    if task not in TASKS:
        raise R1kitError(f"unknown synthetic task {task!r}; available: {', '.join(TASKS)}")

    def rows(n: int, seed: int, level: int) -> list[dict]:
        return make_task_set(task, n, seed=seed, level=level, split="test")

    return Benchmark(
        f"synthetic:{task}",
        layouts.synthetic,
        "countdown" if task == "countdown" else "math",
        MATH_TEMPLATE,
        4,
        "generated by r1kit.data.make_task_set",
        "r1kit.data.tasks",
        make_rows=rows,
    )


def list_benchmarks() -> list[str]:
    from r1kit.data.tasks import TASKS

    return sorted(BENCHMARKS) + [f"synthetic:{t}" for t in TASKS]


def get_benchmark(name_or_file: str | os.PathLike) -> Benchmark:
    """A built-in benchmark by name, a synthetic task (`synthetic:<task>` or `<task>`), or a spec file."""
    text = str(name_or_file)
    if text in BENCHMARKS:
        return BENCHMARKS[text]
    if text.endswith((".yaml", ".yml", ".json")) or Path(text).is_file():
        return load_spec(text)
    from r1kit.data.tasks import TASKS

    task = text.removeprefix("synthetic:")
    if text.startswith("synthetic:") or task in TASKS:
        return _synthetic(task)
    raise R1kitError(
        f"unknown benchmark {text!r}; built-in: {', '.join(list_benchmarks())}; "
        "or pass a YAML/JSON benchmark file"
    )


_SPEC_KEYS = {"name", "data", "fields", "template", "grader", "samples"}


def load_spec(path: str | os.PathLike) -> Benchmark:
    """A user benchmark from YAML/JSON.

    Keys: `data` (path, relative to the spec file, or hf:id), `grader` (math|exact|choice|code|countdown),
    optional `name` (default: file stem), `fields` (a `FieldMap`: question, answer, id, choices, tests,
    entry_point), `template` (default per grader; must contain "{question}"), `samples` (default 4).
    """
    path = Path(path)
    if not path.is_file():
        raise R1kitError(f"benchmark file not found: {path}")
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot parse benchmark spec ({e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a benchmark spec is a mapping with keys {sorted(_SPEC_KEYS)}")
    if unknown := set(spec) - _SPEC_KEYS:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    for key in ("data", "grader"):
        if key not in spec:
            raise ConfigError(f"{path}: missing required key {key!r}")
    grader = spec["grader"]
    if grader not in GRADERS:
        raise ConfigError(f"{path}: grader must be one of {sorted(GRADERS)}, got {grader!r}")
    try:
        fields = FieldMap(**(spec.get("fields") or {}))
    except TypeError as e:
        raise ConfigError(
            f"{path}: fields: {e}; allowed: {[f.name for f in dataclasses.fields(FieldMap)]}"
        ) from None
    template = spec.get("template") or DEFAULT_TEMPLATES[grader]
    if "{question}" not in template:
        raise ConfigError(f"{path}: template must contain {{question}}")
    samples = spec.get("samples", 4)
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"{path}: samples must be a positive integer, got {samples!r}")
    data = str(spec["data"])
    if not data.startswith("hf:") and not Path(data).is_absolute():
        data = str(path.parent / data)
    return Benchmark(
        str(spec.get("name") or path.stem),
        functools.partial(layouts.mapped, fields=fields, grader=grader),
        grader,
        template,
        samples,
        f"fields {dataclasses.asdict(fields)}",
        str(path),
        data=data,
    )


def render(template: str, fields: dict[str, str]) -> str:
    """Fill "{name}" placeholders from `fields`; other braces (such as \\boxed{}) are left alone."""
    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), template)


def _resolve_data(bench: Benchmark, data: str | None) -> str:
    if data or bench.data:
        return str(data or bench.data)
    root = os.environ.get(DATA_ENV)
    if root:
        for name in bench.files:
            candidate = Path(root) / bench.name / name
            if candidate.is_file():
                return str(candidate)
    raise R1kitError(
        f"no data for benchmark {bench.name!r}: pass --data PATH (expected: {bench.expects}); "
        f"public release: {bench.source}; or set ${DATA_ENV} to a folder holding "
        f"{bench.name}/{' or '.join(bench.files)}"
    )


def load_problems(
    bench: Benchmark, *, data: str | None = None, limit: int | None = None, seed: int = 0, level: int = 2
) -> list[Problem]:
    """The first `limit` problems of `bench` (all when None), prompts rendered.

    `seed` shuffles multiple-choice options (GPQA) and seeds synthetic task generation; `level` is the
    synthetic difficulty (synthetic sets hold `limit` problems, 100 by default).
    """
    if bench.make_rows is not None:
        rows = bench.make_rows(100 if limit is None else limit, seed, level)
    else:
        from r1kit.data.records import read_records

        rows = read_records(_resolve_data(bench, data))
        rows = rows if limit is None else rows[:limit]
    if not rows:
        raise R1kitError(f"benchmark {bench.name!r}: the data holds no problems")
    problems = [bench.layout(row, i, seed) for i, row in enumerate(rows)]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise R1kitError(f"benchmark {bench.name!r}: problem ids are not unique")
    return [dataclasses.replace(p, prompt=render(bench.template, p.fields)) for p in problems]
