"""The streamed reasoning split, fed in every chunking, against hand-written splits."""

import pytest

from r1kit.serving.reasoning_stream import ReasoningStream


def run(text: str, prefilled: bool, cuts: list[int]) -> tuple[list[str], list[str]]:
    stream, reasoning, content = ReasoningStream(prefilled), [], []
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    for piece in pieces:
        r, c = stream.feed(piece)
        reasoning.append(r)
        content.append(c)
    r, c = stream.finish()
    return reasoning + [r], content + [c]


CASES = [  # text, prefilled, reasoning, content (as the DeepSeek API would return them)
    ("a plan\n</think>\n\n42", True, "a plan", "42"),
    ("  step 1\n step 2 \n</think> x = 4 \n", True, "step 1\n step 2", "x = 4"),
    ("<think>\nplan</think>42", False, "plan", "42"),
    ("\n<think>plan</think>", False, "plan", ""),
    ("still thinking </thi", True, "still thinking </thi", ""),
    ("no tags at all <thin", False, "", "no tags at all <thin"),
    ("<thin", False, "", "<thin"),
    ("a</think>b</think>c", True, "a", "b</think>c"),
    ("", True, "", ""),
]


@pytest.mark.parametrize("text, prefilled, reasoning, content", CASES)
def test_every_two_cut_chunking_gives_the_same_split(text, prefilled, reasoning, content):
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            r, c = run(text, prefilled, [i, j])
            assert ("".join(r), "".join(c)) == (reasoning, content), (i, j)


def test_reasoning_streams_before_the_tag_closes_and_content_after():
    stream = ReasoningStream(prefilled=True)
    assert stream.feed("Let me think") == ("Let me think", "")
    assert stream.feed(" about it </th") == (" about it", "")  # trailing space and the tag prefix held back
    assert stream.feed("ink>\n\nThe answer") == ("", "The answer")
    assert stream.feed(" is 4.  ") == ("", " is 4.")
    assert stream.finish() == ("", "")
