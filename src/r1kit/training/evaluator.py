"""Greedy held-out accuracy of a model during training: the same prompts and grading as GRPO's rewards."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1kit.training.tasks import TaskData


def greedy_accuracy(engine, examples: list[dict], data: TaskData, max_new_tokens: int) -> float:
    """Share of `examples` whose greedy reply commits to the right answer (prefill-aware)."""
    from r1kit.generation import SamplingParams
    from r1kit.training.tasks import example_messages, is_correct

    outs = engine.generate([example_messages(ex, data) for ex in examples],
                           SamplingParams(max_new_tokens=max_new_tokens, temperature=0))
    return sum(is_correct(c.text, ex, prefilled_think=c.prefilled_think)
               for c, ex in zip(outs, examples)) / max(len(examples), 1)


@dataclass
class Evaluator:
    """Greedy accuracy on held-out task questions (tasks' test split), the same prompts as GRPO uses."""

    tokenizer: object
    tasks: TaskData
    examples: list[dict]
    max_new_tokens: int
    every: int

    @classmethod
    def build(cls, tokenizer, tasks: TaskData, size: int, max_new_tokens: int, every: int, seed: int):
        from r1kit.training.tasks import load_examples

        return cls(tokenizer, tasks, load_examples(tasks, "test", seed)[:size], max_new_tokens, every)

    @torch.no_grad()
    def __call__(self, model) -> float:
        from r1kit.generation import Engine

        was_training = model.training
        model.eval()  # no router statistics or balance loss from evaluation forwards
        try:
            engine = Engine(model, self.tokenizer, max_batch_size=min(64, max(1, len(self.examples))))
            return greedy_accuracy(engine, self.examples, self.tasks, self.max_new_tokens)
        finally:
            model.train(was_training)
