"""GSM8K rows -> task examples and R1-format cold-start targets; the train/evaluation disjointness check."""

import json

import pytest

from r1kit.data.gsm8k import (
    check_disjoint,
    gsm8k_example,
    normalize_question,
    split_solution,
    strip_calculator,
)
from r1kit.errors import R1kitError

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_solution_becomes_plain_steps_and_the_final_number():
    reasoning, answer = split_solution(NATALIA["answer"])
    assert reasoning == ("Natalia sold 48/2 = 24 clips in May.\n"
                         "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert answer == "72"
    assert strip_calculator("she earned 0.2 x 50 = $<<0.2*50=10>>10.") == "she earned 0.2 x 50 = $10."
    # thousands separators go (the evaluation's gold drops them too); blank lines are dropped
    assert split_solution("He has 2*600 = <<2*600=1200>>1200 dollars.\n\n#### 1,200") == (
        "He has 2*600 = 1200 dollars.", "1200")


def test_example_fields_and_bad_rows():
    ex = gsm8k_example(NATALIA, 3)
    assert ex == {"id": "gsm8k-3", "kind": "math", "question": NATALIA["question"], "answer": "72",
                  "solution": "Natalia sold 48/2 = 24 clips in May.\n"
                              "Natalia sold 48+24 = 72 clips altogether in April and May."}
    with pytest.raises(R1kitError, match="####"):
        gsm8k_example({"question": "q", "answer": "no final line"}, 0)
    with pytest.raises(R1kitError, match="'answer'"):
        gsm8k_example({"question": "q"}, 0)


def test_cold_start_target_is_think_steps_then_boxed_answer(tmp_path):
    import r1kit
    from r1kit.training.lm_data import cold_start_rows
    from r1kit.training.packing import chat_sample
    from r1kit.training.tasks import TaskData

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(NATALIA) + "\n")
    data = TaskData(dataset=str(path), layout="gsm8k", num_test=0, prompt_template="{question}\nPut it in \\boxed{}.")
    (row,) = cold_start_rows(data, 0, "The answer is \\boxed{{answer}}.")
    assert row["messages"][0] == {"role": "user", "content": NATALIA["question"] + "\nPut it in \\boxed{}."}
    assert row["messages"][1] == {
        "role": "assistant", "content": "The answer is \\boxed{72}.",
        "reasoning": "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."}
    # a template that ignores `reasoning` (ChatML here) still trains on the reasoning, inside <think> tags
    tok = r1kit.load_tokenizer("toy-moe")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
                         "{% else %}<|assistant|>{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    msgs = [{"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "The answer is \\boxed{5}.", "reasoning": "2+3 = 5"}]
    sample = chat_sample(tok, msgs)
    target = tok.decode([i for i, m in zip(sample.ids, sample.mask) if m])
    assert target == "<think>\n2+3 = 5\n</think>\nThe answer is \\boxed{5}.<eos>"


def test_disjointness_check_compares_normalized_text():
    assert normalize_question("  How many  clips did\nNatalia SELL? ") == "how many clips did natalia sell"
    check_disjoint(["What is 2+3?", "How many apples?"], ["What is 2+4?"])  # disjoint: no error
    with pytest.raises(R1kitError, match="1 question"):
        check_disjoint(["What is 2+3?", "How many apples?"], ["what is 2 + 3 ?", "Other."])


def test_max_solution_steps_keeps_the_questions_with_short_worked_solutions(tmp_path):
    from r1kit.errors import ConfigError
    from r1kit.training.tasks import TaskData, load_examples

    three_steps = {"question": "Tom has 3 bags of 4 apples and eats 2. How many are left?",
                   "answer": "3*4 = <<3*4=12>>12\n12-2 = <<12-2=10>>10\nHe has 10 left.\n#### 10"}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(NATALIA) + "\n" + json.dumps(three_steps) + "\n")
    kept = lambda n: [ex["answer"] for ex in load_examples(
        TaskData(dataset=str(path), layout="gsm8k", num_test=0, max_solution_steps=n), "train", 0)]
    assert kept(None) == ["72", "10"]
    assert kept(3) == ["72", "10"] and kept(2) == ["72"]  # Natalia's solution has 2 steps, Tom's 3
    with pytest.raises(ConfigError, match="max_solution_steps=1 leaves no train example"):
        kept(1)
    with pytest.raises(ValueError, match="set data.dataset"):  # synthetic tasks have no worked solutions to count
        TaskData(max_solution_steps=2)
