"""What causal-LM training reads: a text corpus (pretraining) or chat rows (SFT), tokenized into `Sample`s.

Pretraining: the synthetic corpus (optionally part rendered as chat turns with `<think>` reasoning), a .txt
file (documents separated by blank lines) or a record file with a text field. SFT: a chat dataset, or without
one the cold start: the synthetic tasks' worked solutions rendered R1-style (reasoning = the solution, answer =
"Answer: {answer}", which `r1kit.rewards.extract_answer` reads).

Left out: document splitting across rows (long samples are truncated by the loop).
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from r1kit.config import configclass
from r1kit.errors import ConfigError, R1kitError
from r1kit.training.packing import Sample
from r1kit.training.tasks import TaskData

ANSWER_FORMAT = "Answer: {answer}"  # the answer line of cold-start targets; read by extract_answer


@configclass
class CorpusData:
    file: str | None = None  # .txt (documents separated by blank lines) or a record file with a text field
    text_field: str = "text"
    num_docs: PositiveInt = 20000  # synthetic corpus size when no file is given
    tasks: list[str] | None = None  # synthetic corpus tasks (None: all)
    levels: list[int] = field(default_factory=lambda: [1, 2])
    # share of synthetic documents rendered as chat turns with worked <think> reasoning through the tokenizer's
    # template, so a base model has seen the response format (as DeepSeek-V3-Base had seen reasoning text)
    chat_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0


@configclass
class ChatData:
    dataset: str | None = None  # chat dataset (JSONL/Parquet/CSV/hf:id); None: cold start from `tasks`
    on_error: Literal["fail", "skip"] = "fail"  # skip: drop rows that lack a usable assistant turn
    # the answer line of cold-start targets ("{answer}" is replaced); e.g. "The answer is \\boxed{{answer}}." for
    # a prompt that asks for a boxed answer. Every form here is one `r1kit.rewards.extract_answer` reads.
    answer_format: str = ANSWER_FORMAT

    def __post_init__(self):
        if "{answer}" not in self.answer_format:
            raise ConfigError("data.answer_format must contain {answer}")


def cold_start_rows(tasks: TaskData, seed: int, answer_format: str = ANSWER_FORMAT) -> list[dict]:
    """Chat rows from the tasks' worked solutions: user = the prompt, assistant = reasoning + answer line."""
    from r1kit.training.tasks import example_messages, load_examples

    rows = []
    for ex in load_examples(tasks, "train", seed):
        if not ex.get("solution"):
            raise R1kitError(f"example {ex.get('id')} has no worked solution; pass data.dataset instead")
        reply = {"role": "assistant", "content": answer_format.replace("{answer}", str(ex["answer"])),
                 "reasoning": ex["solution"]}
        rows.append({"messages": example_messages(ex, tasks) + [reply]})
    return rows


def chat_samples(data: ChatData, tasks: TaskData, tokenizer, seed: int) -> list[Sample]:
    """Chat rows of `data.dataset`, or cold-start rows from `tasks` when there is no dataset, tokenized."""
    from r1kit.data import load_chat_dataset
    from r1kit.training.packing import chat_sample

    rows = (load_chat_dataset(data.dataset, on_error=data.on_error) if data.dataset
            else cold_start_rows(tasks, seed, data.answer_format))
    if not rows:
        raise R1kitError(f"{data.dataset}: no conversations to train on (from rejection sampling, this means "
                         "the sampled model answered nothing correctly: train the earlier stages longer)")
    return [chat_sample(tokenizer, row["messages"]) for row in rows]


def corpus_samples(data: CorpusData, tokenizer, seed: int) -> list[Sample]:
    from r1kit.training.packing import text_sample

    if data.file is None:
        from r1kit.data import synthetic_corpus

        n_chat = int(data.num_docs * data.chat_fraction)
        docs = synthetic_corpus(data.num_docs - n_chat, seed=seed, tasks=data.tasks, level=data.levels)
        if n_chat:
            from r1kit.data import TASKS

            tasks = TaskData(tasks=data.tasks or sorted(TASKS), level=max(data.levels), num_train=n_chat)
            for row in cold_start_rows(tasks, seed + 1):  # text_sample adds BOS/EOS itself
                text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
                text = text.removeprefix(tokenizer.bos_token or "").removesuffix(tokenizer.eos_token or "")
                docs.append(text)
    elif data.file.endswith(".txt"):
        path = Path(data.file)
        if not path.is_file():
            raise R1kitError(f"data file not found: {path}")
        docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    else:
        from r1kit.data import read_records

        records = read_records(data.file)
        missing = [i for i, r in enumerate(records) if not isinstance(r.get(data.text_field), str)]
        if missing:
            raise R1kitError(f"{data.file}: row {missing[0]} has no text field {data.text_field!r}")
        docs = [r[data.text_field] for r in records]
    if not docs:
        raise R1kitError("the pretraining corpus is empty")
    return [text_sample(tokenizer, d) for d in docs]
