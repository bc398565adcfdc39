"""GSM8K rows (openai/grade-school-math) as r1kit task examples with R1-format worked solutions.

A GSM8K row is {"question", "answer"}, the answer a worked solution with calculator annotations that ends
"#### N":

    Natalia sold 48/2 = <<48/2=24>>24 clips in May.
    Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.
    #### 72

`gsm8k_example` turns it into a math task example: `answer` "72" (thousands separators dropped, as the
evaluation's gold), `solution` the steps with the `<<...>>` annotations removed ("48/2 = 24"), which the cold
start renders as the `<think>` reasoning of its SFT targets.

`normalize_question` and `check_disjoint` guard an evaluation: no training question (normalized text) may be
one of the evaluated questions.
Left out: the Socratic variant's sub-question lines (they convert the same way, as plain steps).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from r1kit.errors import R1kitError

_CALCULATOR = re.compile(r"<<[^<>]*>>")  # "<<48/2=24>>": the dataset's calculator call, followed by its result
FINAL = "####"


def strip_calculator(text: str) -> str:
    """The text without calculator annotations: "48/2 = <<48/2=24>>24" -> "48/2 = 24"."""
    return _CALCULATOR.sub("", text)


def split_solution(solution: str) -> tuple[str, str]:
    """(worked steps without annotations, final answer) of a GSM8K solution ending "#### N".

    Raises R1kitError when the solution has no "#### N" line or no steps before it.
    """
    steps, sep, final = solution.rpartition(FINAL)
    final = final.strip().replace(",", "")
    if not sep or not final:
        raise R1kitError(f"gsm8k: a solution does not end with '#### N': {solution[-80:]!r}")
    lines = [line.strip() for line in strip_calculator(steps).splitlines()]
    reasoning = "\n".join(line for line in lines if line)
    if not reasoning:
        raise R1kitError(f"gsm8k: a solution has no worked steps before '####': {solution[:80]!r}")
    return reasoning, final


def gsm8k_example(row: dict, index: int, stem: str = "gsm8k") -> dict:
    """A math task example {"id", "kind", "question", "answer", "solution"} from one GSM8K row."""
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise R1kitError(f"gsm8k: row {index} lacks the text field {key!r} (it has {sorted(row)})")
    solution, answer = split_solution(row["answer"])
    return {"id": str(row.get("id", f"{stem}-{index}")), "kind": "math", "question": row["question"].strip(),
            "answer": answer, "solution": solution}


def load_gsm8k(path: str) -> list[dict]:
    """Every row of a GSM8K file (JSONL/JSON/Parquet/CSV with question, answer) as a task example."""
    from pathlib import Path

    from r1kit.data.records import read_records

    stem = Path(path).name.split(".")[0]
    return [gsm8k_example(row, i, f"gsm8k-{stem}") for i, row in enumerate(read_records(path))]


def normalize_question(text: str) -> str:
    """The comparison key of a question: case-folded words and numbers, punctuation and spacing dropped."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def check_disjoint(train: Iterable[str], held_out: Iterable[str], train_name: str = "the training set",
                   held_name: str = "the evaluation set") -> None:
    """Raise R1kitError when a training question (normalized text) is also a held-out question."""
    held = {normalize_question(q) for q in held_out}
    leaked = [q for q in train if normalize_question(q) in held]
    if leaked:
        raise R1kitError(f"{len(leaked)} question(s) of {train_name} are also in {held_name} (normalized text; "
                         f"the evaluation set is never trained on), e.g. {leaked[0][:120]!r}")
