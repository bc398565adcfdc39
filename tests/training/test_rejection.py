"""Rejection sampling: each R1 filter on crafted replies with exact counts, the written dataset, the CLI."""

import json

import pytest

from r1kit.config import load_config
from r1kit.data import load_chat_dataset
from r1kit.errors import ConfigError
from r1kit.training.rejection import (
    REASONS,
    Candidate,
    FilterConfig,
    RejectionConfig,
    rejection_sample,
    repeat_ratio,
    select_traces,
)

PROMPT = [{"role": "user", "content": "What is 5+7?"}]
EXAMPLE = {"id": "q1", "question": "What is 5+7?", "answer": "12"}


def cand(text, finish="stop", example=EXAMPLE, tokens=None):
    return Candidate(example, PROMPT, text, finish, tokens)


def test_prefilled_think_is_read_as_the_engine_reports_it():
    """Under a template that opened <think>, a reply that never closes it has no answer (a boxed value in the
    reasoning does not count), and a reply that opens a second block is malformed."""
    def prefilled(text, finish="stop"):
        return Candidate(EXAMPLE, PROMPT, text, finish, None, prefilled_think=True)

    candidates = [
        prefilled("5+7=12, so \\boxed{12}"),                      # format: still inside the think block
        prefilled("<think>5+7=12</think>Answer: 12"),              # format: opens a block the prompt opened
        prefilled("5+7=12 so 12.\n</think>\nAnswer: 12"),           # kept
        prefilled("5+7=13 so \\boxed{12}.\n</think>\nAnswer: 13"),  # incorrect: the box is in the reasoning
    ]
    rows, summary = select_traces(candidates, FilterConfig(max_per_prompt=4))
    assert summary["kept"] == 1 and summary["rejected"]["format"] == 2 and summary["rejected"]["incorrect"] == 1
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "Answer: 12", "reasoning": "5+7=12 so 12."}


def test_repeat_ratio_by_hand():
    assert repeat_ratio("a b a b a b", 2) == pytest.approx(1 - 2 / 5)  # ab ba ab ba ab: 2 distinct of 5
    assert repeat_ratio("a b c", 4) == 0.0
    assert repeat_ratio("one two three four five", 2) == 0.0


def test_filters_on_crafted_replies_with_exact_counts():
    good = "5+7=12, write 2 carry 1. Write 1. So 12.\n</think>\nAnswer: 12"
    candidates = [
        cand(good),                                                          # kept
        cand("5+7=12, write 2 carry 1.   Write 1. So 12.\n</think>\n Answer: 12"),  # duplicate (whitespace)
        cand("5+7 is 12.\n</think>\nAnswer: 12"),                           # kept (different reasoning)
        cand("7+5=12. So 12.\n</think>\nThe answer is 12"),                 # over_cap (max_per_prompt=2)
        cand("5+7=13. So 13.\n</think>\nAnswer: 13"),                       # incorrect
        cand("5+7=12, write 2 carry 1. Write 1. So 12. So 12. So", finish="length"),  # truncated
        cand("5+7=12.\n</think>\nAnswer: 12", tokens=500),                  # truncated (over max_tokens)
        cand("Answer: 12"),                                                  # format: no reasoning block
        cand("<think>a</think><think>b</think>Answer: 12"),                 # format: two blocks
        cand("五加七等于十二 所以 答案 是 十二 then 12.\n</think>\nAnswer: 12"),   # language (mixed)
        cand("So 12. " * 20 + "\n</think>\nAnswer: 12"),                    # repetitive
        cand("3+4=7. So 7.\n</think>\nAnswer: 7",
             example={"id": "q2", "question": "What is 3+4?", "answer": "7"}),  # kept (another prompt)
    ]
    rows, summary = select_traces(candidates, FilterConfig(max_per_prompt=2, max_tokens=400))
    assert summary["rejected"] == {"truncated": 2, "format": 2, "incorrect": 1, "language": 1,
                                   "repetitive": 1, "duplicate": 1, "over_cap": 1}
    assert list(summary["rejected"]) == list(REASONS)
    assert (summary["candidates"], summary["kept"], summary["prompts"], summary["prompts_with_kept"]) == (12, 3, 2, 2)
    assert rows[0]["messages"] == PROMPT + [{"role": "assistant", "content": "Answer: 12",
                                             "reasoning": "5+7=12, write 2 carry 1. Write 1. So 12."}]
    assert [r["id"] for r in rows] == ["q1", "q1", "q2"]


def test_language_threshold_is_configurable():
    mixed = cand("five plus seven 十 so twelve.\n</think>\nAnswer: 12")  # 5 of 6 words Latin: 0.83
    assert select_traces([mixed], FilterConfig(min_language=0.95))[1]["rejected"]["language"] == 1
    assert select_traces([mixed], FilterConfig(min_language=0.8))[1]["kept"] == 1


def test_config_is_validated():
    with pytest.raises(ConfigError, match="min_language"):
        load_config(RejectionConfig, overrides={"filters": {"min_language": 2}})


def test_cli_recipe_writes_a_dataset_and_summary(tmp_path):
    out = tmp_path / "rs" / "sft.jsonl"
    cfg = load_config(RejectionConfig, overrides={
        "model": "toy-dense", "output": str(out), "tasks": {"tasks": ["addition"], "level": 1, "num_train": 3},
        "sampling": {"samples_per_prompt": 2, "max_new_tokens": 8, "temperature": 1.0}})
    summary = rejection_sample(cfg)
    assert summary["candidates"] == 6 and summary["prompts"] == 3
    assert summary["kept"] + sum(summary["rejected"].values()) == 6
    assert summary["rejected"]["truncated"] + summary["rejected"]["format"] >= 5  # an untrained model rambles
    assert json.loads((tmp_path / "rs" / "sft.jsonl.summary.json").read_text()) == summary
    assert len(out.read_text().splitlines()) == summary["kept"]


def test_written_dataset_loads_for_sft(tmp_path):
    from r1kit.training.rejection import write_dataset

    rows, summary = select_traces([cand("5+7=12.\n</think>\nAnswer: 12")], FilterConfig())
    path, _ = write_dataset(rows, summary, str(tmp_path / "d.jsonl"))
    loaded = load_chat_dataset(path)
    assert loaded[0]["messages"][-1] == {"role": "assistant", "content": "Answer: 12", "reasoning": "5+7=12."}
