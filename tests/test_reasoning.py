"""The reply format (`r1kit.reasoning`) against hand-written splits; the stream and the chat printer against the
whole-text split; GRPO scoring of replies cut off inside, never opening, or closing twice their think block."""

import itertools
import random

import pytest

from r1kit.reasoning import (
    ReasoningStream,
    answer_part,
    has_answer,
    is_well_formed,
    prompt_opens_think,
    split_reasoning,
    split_reply,
)

# text, prefilled, reasoning, answer (None: the reply never left its think block). Written by hand.
SPLITS = [
    # prefilled by the template: the reply starts inside the block
    ("a plan\n</think>\n\n42", True, "a plan", "42"),
    ("  step 1\n step 2 \n</think> x = 4 \n", True, "step 1\n step 2", "x = 4"),
    # truncated inside the block: no answer, whatever the reasoning wrote
    ("still thinking \\boxed{42} and", True, "still thinking \\boxed{42} and", None),
    ("still thinking </thi", True, "still thinking </thi", None),
    ("<think>\nthe answer is \\boxed{9}", False, "the answer is \\boxed{9}", None),
    ("", True, "", None),
    # the reply opens the block itself
    ("<think>\nplan</think>42", False, "plan", "42"),
    ("\n<think>plan</think>", False, "plan", ""),
    # never opened: all answer
    ("just \\boxed{42}", False, "", "just \\boxed{42}"),
    ("no tags at all <thin", False, "", "no tags at all <thin"),
    ("<thin", False, "", "<thin"),
    ("", False, "", ""),
    # double-closed: the first </think> ends the reasoning, the rest (tag included) is the answer
    ("a</think>b</think>c", True, "a", "b</think>c"),
    ("<think>a</think>\\boxed{1}</think>\\boxed{2}", False, "a", "\\boxed{1}</think>\\boxed{2}"),
    # a second <think> inside a block is reasoning text
    ("<think>a<think>b</think>c", False, "a<think>b", "c"),
    ("<think>r</think>a", True, "<think>r", "a"),
]
# Replies the whole-text split reads leniently but a stream cannot (it sent the start as content already).
LENIENT = [
    ("plan</think>42", False, "plan", "42"),  # a prefill that was not detected
    ("Sure. <think>hmm</think> 42", False, "Sure. hmm", "42"),  # a block opened mid-reply
    ("So 3. <think>wait", False, "wait", None),  # opened mid-reply, never closed: no answer
]


@pytest.mark.parametrize("text, prefilled, reasoning, answer", SPLITS + LENIENT)
def test_split_by_hand(text, prefilled, reasoning, answer):
    assert split_reply(text, prefilled) == (reasoning, answer)
    assert split_reasoning(text, prefilled) == (reasoning, answer or "")  # Completion's form: "" for none
    assert answer_part(text, prefilled) == answer
    assert has_answer(text, prefilled) is (answer is not None)


def test_prompt_opens_think():
    assert prompt_opens_think("<|User|>hi<|Assistant|><think>\n")
    assert not prompt_opens_think("<|User|>hi<|Assistant|>")
    assert not prompt_opens_think("<|Assistant|><think>\n\n</think>\n\n")  # thinking switched off


@pytest.mark.parametrize("text, prefilled, expected", [
    ("<think>reason</think>answer", False, True),
    (" \n<think>reason</think>answer", False, True),
    ("reason</think>answer", True, True),
    ("reason</think>answer", None, True),  # prefill inferred: a close without an open
    ("<think>reason</think>answer", None, True),
    ("<think>reason</think>answer", True, False),  # a second <think> after the prefill
    ("reason</think>answer", False, False),
    ("<think>reason</think>", False, False),  # no answer
    ("<think></think>answer", False, False),  # no reasoning
    ("<think>a</think>b<think>c</think>d", None, False),  # two blocks
    ("a</think>b</think>c", True, False),  # double-closed
    ("preamble<think>a</think>b", False, False),
    ("just an answer", False, False),  # never opened
    ("<think>unfinished reasoning", False, False),
    ("unfinished reasoning", True, False),  # truncated after the prefill
])
def test_is_well_formed(text, prefilled, expected):
    assert is_well_formed(text, prefilled) is expected


# ---- streaming -----------------------------------------------------------------------------------------------------

def _stream(text: str, prefilled: bool, pieces: list[str]) -> tuple[str, str]:
    stream, reasoning, content = ReasoningStream(prefilled), [], []
    assert "".join(pieces) == text
    for piece in pieces:
        r, c = stream.feed(piece)
        reasoning.append(r)
        content.append(c)
    r, c = stream.finish()
    return "".join(reasoning + [r]), "".join(content + [c])


@pytest.mark.parametrize("text, prefilled, reasoning, answer", SPLITS)
def test_every_two_cut_chunking_streams_the_hand_written_split(text, prefilled, reasoning, answer):
    for i, j in itertools.combinations_with_replacement(range(len(text) + 1), 2):
        pieces = [text[:i], text[i:j], text[j:]]
        assert _stream(text, prefilled, pieces) == (reasoning, answer or ""), (i, j)


def test_random_replies_stream_to_the_whole_text_split():
    """Random replies built from tag fragments and whitespace, fed in random pieces: the stream concatenates to
    `split_reasoning` of the whole text (replies in the lenient cases are skipped: see the module docstring)."""
    rng = random.Random(0)
    atoms = ["<think>", "</think>", "<th", "</thi", "nk>", "a", "b", " ", "\n", "\\boxed{1}"]
    checked = 0
    for _ in range(3000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 8)))
        prefilled = rng.random() < 0.5
        opens_itself = text.lstrip().startswith("<think>")
        if not prefilled and not opens_itself and ("</think>" in text or "<think>" in text):
            continue
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 4))))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert _stream(text, prefilled, pieces) == split_reasoning(text, prefilled), (text, prefilled, cuts)
        checked += 1
    assert checked > 1500


@pytest.mark.parametrize("text, prefilled, reasoning, answer", LENIENT)
def test_lenient_replies_stream_as_content(text, prefilled, reasoning, answer):
    assert _stream(text, prefilled, list(text)) == ("", text.strip())


def test_reasoning_streams_before_the_tag_closes_and_content_after():
    stream = ReasoningStream(prefilled=True)
    assert stream.feed("Let me think") == ("Let me think", "")
    assert stream.feed(" about it </th") == (" about it", "")  # trailing space and the tag prefix held back
    assert stream.feed("ink>\n\nThe answer") == ("", "The answer")
    assert stream.feed(" is 4.  ") == ("", " is 4.")
    assert stream.finish() == ("", "")


@pytest.mark.parametrize("text, prefilled, reasoning, answer", SPLITS[:8] + SPLITS[12:13])
def test_chat_printer_dims_the_reasoning_and_prints_the_answer(text, prefilled, reasoning, answer, capsys):
    from r1kit.generation.cli import _ReasoningPrinter

    printer = _ReasoningPrinter(prefilled)
    for ch in text:  # one character per delta: tags always arrive split
        printer.feed(ch)
    printer.close()
    out = capsys.readouterr().out
    dim, reset = "\033[2m", "\033[0m"
    expected = (f"{dim}{reasoning}" if reasoning else "") + (f"{reset}\n" if reasoning and answer else "")
    assert out == expected + (answer or "") + f"{reset}\n"


# ---- GRPO scoring --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, prefilled, accuracy, fmt", [
    ("2 + 2 is \\boxed{4}. Let me double check", True, 0.0, 0.0),  # cut off mid-thought: no answer
    ("2 + 2 = 4.</think>\\boxed{4}", True, 1.0, 1.0),
    ("<think>2 + 2 = 4.</think>\\boxed{4}", False, 1.0, 1.0),
    ("<think>2 + 2 is \\boxed{4}", False, 0.0, 0.0),  # opened by the model, never closed
    ("\\boxed{4}", False, 1.0, 0.0),  # never opened: an answer, but not the R1 format
    ("so \\boxed{4}</think>\\boxed{5}</think>\\boxed{4}", True, 0.0, 0.0),  # double-closed: 5 and 4 disagree
    ("so \\boxed{5}</think>x</think>\\boxed{4}", True, 1.0, 0.0),  # double-closed: the 5 is reasoning
    ("thinking \\boxed{4}</think>I am not sure.", True, 0.0, 1.0),  # the box is in the reasoning only
])
def test_grpo_scoring_reads_only_the_answer_part(text, prefilled, accuracy, fmt):
    from r1kit.training.tasks import score_completion

    total, parts = score_completion(text, {"question": "2 + 2?", "answer": "4"}, {"accuracy": 1.0, "format": 0.5},
                                    prefilled_think=prefilled, completion_tokens=10, max_tokens=20)
    assert parts == {"accuracy": accuracy, "format": fmt}
    assert total == pytest.approx(accuracy + 0.5 * fmt)


def test_grpo_scoring_requires_the_prefill_fact():
    from r1kit.training.tasks import score_completion

    with pytest.raises(TypeError):
        score_completion("x", {"answer": "4"}, {"accuracy": 1.0})  # no silent default: the engine knows it
