"""The pretraining corpus: deterministic, only train-split questions, answers right."""

import re

import pytest

from r1kit.data import TASKS, make_task_set, synthetic_corpus
from r1kit.errors import R1kitError


def test_deterministic_and_sized():
    docs = synthetic_corpus(200, seed=5)
    assert len(docs) == 200
    assert docs == synthetic_corpus(200, seed=5)
    assert docs != synthetic_corpus(200, seed=6)
    assert all(d.isascii() and len(d) < 260 for d in docs)


def test_layouts_and_tasks_mixed():
    docs = synthetic_corpus(600, seed=0)
    assert any(d.startswith("Q: ") for d in docs)
    assert any(d.startswith("Question: ") for d in docs)
    assert any(d.startswith("What is ") for d in docs)  # the bare layout
    assert any("Sort " in d for d in docs) and any("How many " in d for d in docs)
    assert not any("<think>" in d for d in docs)  # the tagged layout is opt-in


def test_addition_answers_are_true():
    docs = synthetic_corpus(100, seed=1, tasks=["addition"], level=3, layouts=["qa"])
    for doc in docs:
        a, b, answer = re.fullmatch(r"Q: What is (\d+)\+(\d+)\?\nA: .*\nAnswer: (\d+)", doc).groups()
        assert int(a) + int(b) == int(answer)


def test_think_layout():
    (doc,) = synthetic_corpus(1, tasks=["counting"], layouts=["think"])
    assert re.fullmatch(r"How many [a-z] in [a-z]+\?\n<think>.*So \d+\.</think>\n<answer>\d+</answer>", doc)


def test_no_test_split_question_in_corpus():
    docs = synthetic_corpus(3000, seed=0, level=[1, 2])
    corpus_questions = {re.sub(r"^(Q: |Question: )", "", d.split("\n")[0]) for d in docs}
    for name in TASKS:
        for level in (1, 2):
            test = make_task_set(name, 15, level=level, split="test")
            assert not corpus_questions & {e["question"] for e in test}, name


def test_bad_arguments():
    with pytest.raises(R1kitError, match="unknown task"):
        synthetic_corpus(3, tasks=["poetry"])
    with pytest.raises(R1kitError, match="layout"):
        synthetic_corpus(3, layouts=["html"])
    with pytest.raises(R1kitError, match="level"):
        synthetic_corpus(3, level=9)
