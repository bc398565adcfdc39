"""A fake `generate` with known answers: tests decide each sample's reply from its prompt and seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass
class FakeCompletion:
    text: str
    reasoning: str
    answer: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"


def completion(answer: str, *, reasoning: str = "thinking", tokens: int = 10, finish: str = "stop"):
    """A reply as an R1 model gives it: reasoning, </think>, answer (the template prefilled <think>)."""
    return FakeCompletion(f"{reasoning}</think>{answer}", reasoning, answer, list(range(tokens)), [0.0] * tokens,
                          finish)


class FakeGenerate:
    """`r1kit.generate`-compatible: `respond(user_text, seed)` gives a str answer or a FakeCompletion.

    Records every call's prompts and seeds; raises after `fail_after` calls (an interrupted run).
    """

    def __init__(self, respond, fail_after: int | None = None):
        self.respond, self.fail_after, self.calls = respond, fail_after, []

    def __call__(self, model, tokenizer, prompts, *, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                 seed=None, stop=None, matmul_dtype=None):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        assert isinstance(seed, list) and len(seed) == len(prompts)
        self.calls.append({"prompts": prompts, "seeds": seed, "temperature": temperature, "top_p": top_p,
                           "max_new_tokens": max_new_tokens, "matmul_dtype": matmul_dtype})
        out = []
        for p, s in zip(prompts, seed):
            assert isinstance(p, list) and p == [{"role": "user", "content": p[0]["content"]}]  # no system prompt
            r = self.respond(p[0]["content"], s)
            out.append(r if isinstance(r, FakeCompletion) else completion(r))
        return out


class ChatTokenizer:
    chat_template = "{{ messages }}"  # any non-empty template: prompts go out as chat messages


@pytest.fixture
def fake():
    return FakeGenerate


@pytest.fixture
def reply():
    return completion


@pytest.fixture
def tok():
    return ChatTokenizer()
