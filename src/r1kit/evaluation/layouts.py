"""Public releases' field layouts -> `Problem`s: one small function per layout.

A layout function takes one data row, its position and the evaluation seed, and returns a `Problem` whose
`fields` fill the benchmark's prompt template, whose `gold` is the reference answer, and whose `meta` holds
what the grader needs (tests, entry point, countdown numbers, number of choices).

Leaves out: LiveCodeBench test cases stored as pickles (the official loader unpickles
base64(zlib(pickle)) blobs; unpickling downloaded data can run arbitrary code, so only the JSON forms —
plain or base64(zlib(JSON)) — are read, and pickled private tests are skipped and counted); contest-date
filtering of LiveCodeBench (filter the file instead).
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from r1kit.errors import R1kitError

LETTERS = "ABCDEFGHIJ"

# LiveCodeBench's own instructions (lcb_runner/prompts/code_generation.py), with and without starter code.
LCB_STARTER = (
    "You will use the following starter code to write the solution to the problem and enclose your code "
    "within delimiters.\n```python\n{starter_code}\n```"
)
LCB_STDIN = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on "
    "the sample inputs). Enclose your code within delimiters as follows.\n```python\n# YOUR CODE HERE\n```"
)


@dataclass(frozen=True)
class Problem:
    """One benchmark question.

    `fields` are the template inputs ("question"; "choices" and "letters" for multiple choice;
    "instructions" for code); `gold` is the reference answer (a number or expression, a choice letter,
    "" for code graded by tests); `meta` holds grader inputs; `prompt` is the rendered user message,
    filled in by the benchmark.
    """

    id: str
    fields: dict[str, str]
    gold: str
    meta: dict[str, Any] = field(default_factory=dict)
    prompt: str = ""


@dataclass(frozen=True)
class FieldMap:
    """Which columns of a user's data file hold each part of a problem (None: not present)."""

    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    choices: str | None = None
    tests: str | None = None
    entry_point: str | None = None


def _get(row: dict, key: str, layout: str) -> Any:
    if key not in row:
        raise R1kitError(f"{layout}: a row lacks the field {key!r} (it has {sorted(row)})")
    return row[key]


def _numeric_gold(answer: Any) -> str:
    """A gold answer as text; integers lose leading zeros and thousands separators ("025" -> "25")."""
    text = str(answer).strip()
    plain = text.replace(",", "")
    return str(int(plain)) if re.fullmatch(r"-?\d+", plain) else text


def render_choices(choices: list[str]) -> str:
    """Lettered choice lines: "A) first\\nB) second ..."."""
    if not 2 <= len(choices) <= len(LETTERS):
        raise R1kitError(f"a multiple-choice question needs 2..{len(LETTERS)} choices, got {len(choices)}")
    return "\n".join(f"{LETTERS[i]}) {str(c).strip()}" for i, c in enumerate(choices))


def _choice_letter(answer: Any, n_choices: int) -> str:
    """The gold letter from an index (0-based int, as in cais/mmlu) or a letter."""
    if isinstance(answer, str) and answer.strip().upper() in LETTERS[:n_choices]:
        return answer.strip().upper()
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n_choices:
        return LETTERS[answer]
    raise R1kitError(
        f"multiple-choice answer {answer!r} is neither a letter A-{LETTERS[n_choices - 1]} "
        f"nor an index 0-{n_choices - 1}"
    )


def _choice_problem(pid: str, question: str, choices: list[str], gold: str) -> Problem:
    return Problem(
        id=pid,
        fields={
            "question": question.strip(),
            "choices": render_choices(choices),
            "letters": LETTERS[: len(choices)],
        },
        gold=gold,
        meta={"n_choices": len(choices)},
    )


# ---- math ---------------------------------------------------------------------------------------------


def math500(row: dict, index: int, seed: int) -> Problem:
    """HuggingFaceH4/MATH-500 (prm800k test split): problem, answer, unique_id."""
    return Problem(
        id=str(row.get("unique_id", index)),
        fields={"question": _get(row, "problem", "math500")},
        gold=str(_get(row, "answer", "math500")).strip(),
    )


def aime24(row: dict, index: int, seed: int) -> Problem:
    """AIME 2024 as packaged by Qwen2.5-Math: id, problem, answer (zero-padded, e.g. "025")."""
    return Problem(
        id=str(row.get("id", index)),
        fields={"question": _get(row, "problem", "aime24")},
        gold=_numeric_gold(_get(row, "answer", "aime24")),
    )


def gsm8k(row: dict, index: int, seed: int) -> Problem:
    """openai/grade-school-math: question, answer (a worked solution ending "#### N", N may have commas)."""
    answer = str(_get(row, "answer", "gsm8k"))
    if "####" not in answer:
        raise R1kitError(f"gsm8k: row {index}'s answer does not end with '#### N': {answer[-80:]!r}")
    return Problem(
        id=str(row.get("id", index)),
        fields={"question": _get(row, "question", "gsm8k")},
        gold=_numeric_gold(answer.split("####")[-1]),
    )


# ---- multiple choice ----------------------------------------------------------------------------------


def gpqa(row: dict, index: int, seed: int) -> Problem:
    """GPQA CSV: "Question", "Correct Answer", "Incorrect Answer 1..3"; choices shuffled per (seed, row).

    The release lists the correct answer first, so the order is shuffled with a generator seeded by the
    evaluation seed and the record id: the same run always shows the same order.
    """
    pid = str(row.get("Record ID") or index)
    correct = str(_get(row, "Correct Answer", "gpqa-diamond")).strip()
    choices = [correct] + [str(_get(row, f"Incorrect Answer {i}", "gpqa-diamond")).strip() for i in (1, 2, 3)]
    order = list(range(4))
    random.Random(f"{seed}:{pid}").shuffle(order)
    shuffled = [choices[i] for i in order]
    return _choice_problem(pid, str(_get(row, "Question", "gpqa-diamond")), shuffled, LETTERS[order.index(0)])


def mmlu(row: dict, index: int, seed: int) -> Problem:
    """MMLU: question, choices (list), answer (0-based index or letter); also columns A-D instead of choices.

    cais/mmlu's parquet files have this layout (plus "subject", used in the problem id).
    """
    if "choices" in row:
        choices = [str(c) for c in list(row["choices"])]
    elif all(k in row for k in "ABCD"):
        choices = [str(row[k]) for k in "ABCD"]
    else:
        raise R1kitError(f"mmlu: a row has neither 'choices' nor columns A-D (it has {sorted(row)})")
    pid = f"{row['subject']}/{index}" if row.get("subject") else str(row.get("id", index))
    return _choice_problem(
        pid,
        str(_get(row, "question", "mmlu")),
        choices,
        _choice_letter(_get(row, "answer", "mmlu"), len(choices)),
    )


# ---- code ---------------------------------------------------------------------------------------------


def humaneval(row: dict, index: int, seed: int) -> Problem:
    """openai/human-eval: task_id, prompt (signature + docstring), entry_point, test (defines check)."""
    prompt = str(_get(row, "prompt", "humaneval"))
    return Problem(
        id=str(_get(row, "task_id", "humaneval")),
        fields={"question": prompt},
        gold="",
        meta={
            "tests": str(_get(row, "test", "humaneval")),
            "entry_point": str(_get(row, "entry_point", "humaneval")),
            "code_prefix": prompt,
        },
    )


def decode_lcb_tests(value: Any) -> list[dict] | None:
    """LiveCodeBench test cases from a list, a JSON string, or base64(zlib(JSON)); None for pickled blobs."""
    if isinstance(value, list):
        return value
    if value is None or value == "":
        return []
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        raw = zlib.decompress(base64.b64decode(value))
    except (binascii.Error, zlib.error, ValueError) as e:
        raise R1kitError("livecodebench: test cases are neither JSON nor base64(zlib(JSON))") from e
    if raw[:1] == b"\x80":  # pickle protocol >= 2 header: not loaded (see module docstring)
        return None
    return json.loads(raw)


# The rewards sandbox calls the candidate's top-level functions; LeetCode-style problems define a class,
# so the program gets a top-level entry that forwards to `Solution().<func_name>`.
LCB_ENTRY = "lcb_entry"


def _functional_test(case: dict) -> str:
    """A LeetCode-style case (one JSON argument per input line) as an assert on the forwarding entry."""
    args = ", ".join(f"json.loads({line!r})" for line in str(case["input"]).split("\n") if line.strip())
    return f"assert {LCB_ENTRY}({args}) == json.loads({str(case['output'])!r})"


def livecodebench(row: dict, index: int, seed: int) -> Problem:
    """livecodebench/code_generation_lite rows: question_content, starter_code, public_test_cases,
    private_test_cases, metadata.

    Test cases are {"input", "output", "testtype"} with testtype "stdin" (stdin/stdout) or "functional"
    (call `Solution().<metadata.func_name>` with one JSON argument per input line, through a top-level
    forwarding function appended to the program).
    """
    public = decode_lcb_tests(_get(row, "public_test_cases", "livecodebench")) or []
    private = decode_lcb_tests(row.get("private_test_cases"))
    cases = public + (private or [])
    if not cases:
        raise R1kitError(f"livecodebench: problem {row.get('question_id', index)} has no readable test cases")
    meta: dict[str, Any] = {"private_tests_skipped": private is None}
    if all(c.get("testtype", "stdin") == "stdin" for c in cases):
        meta["tests"] = [{"input": str(c["input"]), "output": str(c["output"])} for c in cases]
    else:
        metadata = row.get("metadata") or {}
        func_name = (json.loads(metadata) if isinstance(metadata, str) else metadata).get("func_name")
        if not func_name:
            raise R1kitError(
                f"livecodebench: functional problem {row.get('question_id', index)} has no metadata.func_name"
            )
        meta["tests"] = "import json\n" + "\n".join(_functional_test(c) for c in cases) + "\n"
        meta["code_suffix"] = f"\n\ndef {LCB_ENTRY}(*args):\n    return Solution().{func_name}(*args)\n"
    starter = str(row.get("starter_code") or "")
    instructions = LCB_STARTER.replace("{starter_code}", starter) if starter.strip() else LCB_STDIN
    return Problem(
        id=str(row.get("question_id", index)),
        fields={
            "question": str(_get(row, "question_content", "livecodebench")).strip(),
            "instructions": instructions,
        },
        gold="",
        meta=meta,
    )


# ---- synthetic tasks and user files -------------------------------------------------------------------


def synthetic(row: dict, index: int, seed: int) -> Problem:
    """r1kit.data synthetic examples: id, task, question, answer (+ numbers, target for countdown)."""
    meta = {k: row[k] for k in ("numbers", "target") if k in row}
    return Problem(
        id=str(row.get("id", index)),
        fields={"question": str(row["question"])},
        gold=str(row["answer"]).strip(),
        meta=meta,
    )


def mapped(row: dict, index: int, seed: int, *, fields: FieldMap, grader: str) -> Problem:
    """A user-defined layout: columns named by `fields`, shaped for `grader` (math|exact|choice|code)."""
    name = "user benchmark"
    pid = str(row[fields.id]) if fields.id and fields.id in row else str(index)
    question = str(_get(row, fields.question, name))
    if grader == "choice":
        choices = _get(row, fields.choices or "choices", name)
        choices = json.loads(choices) if isinstance(choices, str) else [str(c) for c in list(choices)]
        return _choice_problem(
            pid, question, choices, _choice_letter(_get(row, fields.answer, name), len(choices))
        )
    if grader == "code":
        tests = _get(row, fields.tests or "tests", name)
        if isinstance(tests, str) and tests.lstrip().startswith("["):
            tests = json.loads(tests)
        meta = {"tests": tests}
        if fields.entry_point:
            meta["entry_point"] = str(_get(row, fields.entry_point, name))
        return Problem(id=pid, fields={"question": question}, gold="", meta=meta)
    return Problem(id=pid, fields={"question": question}, gold=str(_get(row, fields.answer, name)).strip())
