"""Rejection sampling (DeepSeek-R1 §2.3.3): sample k replies per prompt, keep the verified, readable ones.

    r1kit rejection-sample --config rs.yaml    ->  <output> (chat JSONL for `r1kit sft`) + <output>.summary.json

Each candidate is rejected for the first reason that applies, checked in this order:

    truncated    the reply hit max_new_tokens (finish_reason "length") or exceeds filters.max_tokens
    format       no `<think> ... </think>` block followed by an answer (the format reward is not 1)
    incorrect    the accuracy reward is not 1 (None, i.e. not verifiable, also rejects)
    language     mixed-language reasoning: the language reward is below filters.min_language
    repetitive   the share of repeated word n-grams in the reply is above filters.max_repeat_ratio
    duplicate    the same (reasoning, answer) was already kept for this prompt (whitespace-normalized)
    over_cap     the prompt already has filters.max_per_prompt kept replies

Kept replies become rows `{"messages": [prompt messages..., {"role": "assistant", "content": answer,
"reasoning": reasoning}], "id", "answer"}`, which `load_chat_dataset` reads. `select_traces` is the pure part
(candidates in, rows and counts out); `r1kit distill` reuses it for teacher traces.

Left out: model-based judging of non-verifiable prompts (R1 used DeepSeek-V3 as a judge for those) and
filters on code blocks or paragraph length.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field, NonNegativeFloat, PositiveInt

from r1kit.config import configclass
from r1kit.training.loop import DeviceSetting
from r1kit.training.tasks import TaskData

Fraction = Annotated[float, Field(ge=0, le=1)]

REASONS = ("truncated", "format", "incorrect", "language", "repetitive", "duplicate", "over_cap")


@configclass
class FilterConfig:
    language: str = "en"  # target language of the reasoning (a code of r1kit.rewards.language)
    min_language: Fraction = 0.95  # minimum language reward (share of words in the target script)
    max_repeat_ratio: Fraction = 0.5  # maximum share of repeated word n-grams
    ngram: PositiveInt = 4
    max_tokens: PositiveInt | None = None  # reject replies longer than this many tokens (None: only truncation)
    max_per_prompt: PositiveInt = 4


@configclass
class SamplingConfig:
    samples_per_prompt: PositiveInt = 4
    temperature: NonNegativeFloat = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_new_tokens: PositiveInt = 256
    batch_size: PositiveInt = 64  # concurrent sequences in the engine


@configclass
class RejectionConfig:
    model: str = "toy-moe"
    tokenizer: str | None = None
    tasks: TaskData = field(default_factory=TaskData)  # the prompts (train split) and their gold answers
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    output: str = "runs/rejection/sft.jsonl"
    seed: int = 0
    device: DeviceSetting = "auto"


@dataclass
class Candidate:
    """One reply to one example; `messages` is the prompt it answered."""

    example: dict
    messages: list[dict]
    text: str
    finish_reason: str = "stop"
    num_tokens: int | None = None
    prefilled_think: bool | None = None  # the prompt opened <think>; None: not known (a trace file), inferred


# ---- filters -------------------------------------------------------------------------------------------------

def repeat_ratio(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one: 1 - distinct / total (0 when there are none)."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def reject_reason(c: Candidate, f: FilterConfig) -> str | None:
    """The first filter (of REASONS, before dedupe/cap) that rejects `c`, or None when it passes them all."""
    from r1kit.rewards import get_reward

    if c.finish_reason == "length" or (f.max_tokens is not None and (c.num_tokens or 0) > f.max_tokens):
        return "truncated"
    if get_reward("format")(c.text, prefilled_think=c.prefilled_think) < 1.0:
        return "format"
    if (get_reward("accuracy")(c.text, **{**c.example, "prefilled_think": c.prefilled_think}) or 0.0) < 1.0:
        return "incorrect"
    if (get_reward("language")(c.text, language=f.language, prefilled_think=c.prefilled_think) or 0.0) \
            < f.min_language:
        return "language"
    if repeat_ratio(c.text, f.ngram) > f.max_repeat_ratio:
        return "repetitive"
    return None


def trace_row(c: Candidate) -> dict:
    """A chat-dataset row from an accepted candidate (reasoning and answer split at `</think>`)."""
    from r1kit.reasoning import split_reasoning

    reasoning, answer = split_reasoning(c.text, bool(c.prefilled_think))
    reply = {"role": "assistant", "content": answer, "reasoning": reasoning}
    return {"messages": [*c.messages, reply], "id": c.example.get("id"), "answer": c.example.get("answer")}


def select_traces(candidates: list[Candidate], f: FilterConfig) -> tuple[list[dict], dict]:
    """Filter, dedupe and cap candidates (in order). Returns (rows, summary) where summary holds
    `candidates`, `prompts`, `kept`, `prompts_with_kept` and `rejected` (count per reason, every reason listed)."""
    rejected: Counter = Counter({r: 0 for r in REASONS})
    rows: list[dict] = []
    seen: dict[str, set[str]] = {}
    kept_per: Counter = Counter()
    for c in candidates:
        key = _prompt_key(c)
        seen.setdefault(key, set())
        reason = reject_reason(c, f)
        if reason is None:
            text = re.sub(r"\s+", " ", c.text).strip()
            if text in seen[key]:
                reason = "duplicate"
            elif kept_per[key] >= f.max_per_prompt:
                reason = "over_cap"
            else:
                seen[key].add(text)
                kept_per[key] += 1
                rows.append(trace_row(c))
        if reason is not None:
            rejected[reason] += 1
    summary = {"candidates": len(candidates), "prompts": len(seen), "kept": len(rows),
               "prompts_with_kept": len(kept_per), "rejected": dict(rejected)}
    return rows, summary


def _prompt_key(c: Candidate) -> str:
    return str(c.example.get("id") or c.messages)


# ---- sampling --------------------------------------------------------------------------------------------------

def sample_candidates(model, tokenizer, examples: list[dict], tasks: TaskData, s: SamplingConfig,
                      seed: int) -> list[Candidate]:
    """k replies per example from r1kit's engine; reply j of example i uses seed (seed, i, j)."""
    from r1kit.generation import Engine, SamplingParams
    from r1kit.training.tasks import example_messages

    k = s.samples_per_prompt
    prompts = [example_messages(ex, tasks) for ex in examples]
    engine = Engine(model, tokenizer, max_batch_size=s.batch_size)
    params = [SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                             seed=(seed * 1_000_003 + i) * 1024 + j)
              for i in range(len(examples)) for j in range(k)]
    outs = engine.generate([p for p in prompts for _ in range(k)], params)
    return [Candidate(examples[n // k], prompts[n // k], c.text, c.finish_reason, len(c.token_ids), c.prefilled_think)
            for n, c in enumerate(outs)]


def write_dataset(rows: list[dict], summary: dict, output: str) -> tuple[str, str]:
    """Write the chat JSONL and `<output>.summary.json`, each atomically."""
    import json

    from r1kit.io import atomic_write_json, atomic_write_text

    summary_path = f"{output}.summary.json"
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(summary_path, summary)
    return output, summary_path


def rejection_sample(cfg: RejectionConfig) -> dict:
    import torch

    from r1kit.models.checkpoint import load_model
    from r1kit.tokenizer import load_tokenizer
    from r1kit.training.tasks import load_examples

    model = load_model(cfg.model, seed=cfg.seed, device=cfg.device).eval()
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    examples = load_examples(cfg.tasks, "train", cfg.seed)
    with torch.no_grad():
        candidates = sample_candidates(model, tokenizer, examples, cfg.tasks, cfg.sampling, cfg.seed)
    rows, summary = select_traces(candidates, cfg.filters)
    write_dataset(rows, summary, cfg.output)
    return summary


def summarize(cfg: RejectionConfig, summary: dict) -> str:
    rejected = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items())
    return f"kept {summary['kept']} of {summary['candidates']} replies -> {cfg.output}; rejected: {rejected}"


__all__ = ["Candidate", "FilterConfig", "RejectionConfig", "SamplingConfig", "reject_reason", "rejection_sample",
           "repeat_ratio", "sample_candidates", "select_traces", "trace_row", "write_dataset"]
