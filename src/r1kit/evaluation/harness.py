"""`evaluate`: sample k answers per problem under the R1 protocol, grade them, cache them, score them.

Flow: load the benchmark's problems -> list the (problem, sample) pairs not already in `samples.jsonl`
-> generate them (each prompt is one user message, no system prompt, so the model's chat template adds
its generation prompt, e.g. `<think>\\n` for R1 templates) -> grade and append each record -> score
everything -> write summary.json, report.md and the length plot.

An r1kit model generates on one continuous engine: every pending sample is submitted at once, `batch_size`
run at a time, and each record is graded and written as soon as its request finishes (a long sample never
holds a batch back; a problem's k samples share one prefill of its prompt). A custom `generate_fn` or a
vLLM engine is called once per batch of `batch_size` prompts instead.

Determinism: sample j of problem p is drawn with seed hash(seed, p.id, j), so a sample's randomness does
not depend on the batch size, on --limit, on k (raising k reuses the samples already drawn) or on
whether the run was interrupted. A cached record counts when its (model, benchmark, problem id, sample
index, settings hash, weights fingerprint) match and its prompt is the one the current template renders;
the fingerprint (`model_fingerprint`) changes when the weights do, so a model retrained into the same
directory never reuses the old model's samples.

Leaves out: multi-process data parallel generation and regrading cached samples after a grader change (delete samples.jsonl to regrade).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1kit.errors import ConfigError, R1kitError
from r1kit.evaluation.benchmarks import Benchmark, get_benchmark, load_problems
from r1kit.evaluation.grading import Grader, get_grader
from r1kit.evaluation.layouts import Problem
from r1kit.evaluation.metrics import accuracy_by_length, summarize_scores
from r1kit.io import append_jsonl, read_jsonl
from r1kit.tools.python import ToolCall, ToolConfig, tool_stats

SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings; the defaults are R1's protocol except the generation budget.

    R1 generates up to 32,768 tokens; the default here (2,048) keeps a CPU run of a small model within
    minutes. Pass max_new_tokens=32768 to reproduce the paper's setting.
    """

    samples: int | None = None  # k per problem; None: the benchmark's default (R1: 64 for AIME)
    limit: int | None = None  # evaluate only the first N problems (synthetic: generate N, default 100)
    max_new_tokens: int = 2048
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    batch_size: int = 16  # concurrent samples in the engine (per generate() call with a custom generate_fn)
    level: int = 2  # synthetic task difficulty
    data: str | None = None  # data file or hf:id; None: $R1KIT_DATA/<benchmark>/<file>
    chat: bool | None = (
        None  # send the prompt as a user message; None: when the tokenizer has a chat template
    )
    tools: ToolConfig | None = None  # the model may call the sandboxed Python interpreter (r1kit/tools/python.py)

    def __post_init__(self):
        checks = {
            "samples": self.samples is None or self.samples >= 1,
            "limit": self.limit is None or self.limit >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= 0,
            "batch_size": self.batch_size >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"eval: invalid {name}={getattr(self, name)!r}")


def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """The generation seed of one sample: a 31-bit hash of (run seed, problem id, sample index)."""
    digest = hashlib.sha256(f"{seed}:{problem_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _model_id(model: Any) -> str:
    for value in (
        getattr(model, "name_or_path", None),
        getattr(getattr(model, "config", None), "_name_or_path", None),
    ):
        if value:
            return str(value)
    return type(model).__name__


def _load_cache(path: Path, key: dict, prompts: dict[str, str]) -> dict[tuple[str, int], dict]:
    """Cached records of this (model, benchmark, settings) whose prompt is unchanged, by (problem, sample)."""
    if not path.is_file():
        return {}
    cached = {}
    for r in read_jsonl(path):
        if all(r.get(k) == v for k, v in key.items()) and prompts.get(r.get("problem_id")) == r.get("prompt"):
            cached[(r["problem_id"], r["sample"])] = r
    return cached


def model_fingerprint(model: Any) -> str | None:
    """A hash of the model's weights, or None for an object without parameters (a vLLM engine, a test fake).

    Every tensor of the state dict contributes its name, shape, dtype and three float64 statistics (sum, sum of
    squares, a position-weighted sum), computed on its device in chunks: one pass over the weights and one host
    transfer, fast enough for a model of any size. Training changes these statistics; equal weights give equal
    fingerprints on any device."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    names, stats = [], []
    with torch.no_grad():
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            acc = torch.zeros(3, dtype=torch.float64, device=flat.device)
            for start in range(0, flat.numel(), 1 << 22):
                c = flat[start:start + (1 << 22)].double()
                w = (torch.arange(start, start + c.numel(), device=c.device) % 251 + 1).double()
                acc += torch.stack([c.sum(), (c * c).sum(), (c * w).sum()])
            names.append(f"{name}:{tuple(t.shape)}:{t.dtype}")
            stats.append(acc)
    values = torch.stack(stats).tolist() if stats else []
    return hashlib.sha256(json.dumps([names, values]).encode()).hexdigest()[:16]


def _messages(problem: Problem, chat: bool) -> list[dict] | str:
    return [{"role": "user", "content": problem.prompt}] if chat else problem.prompt


def _record(pair: tuple[Problem, int], seed: int, completion: Any, extracted: Any, correct: bool,
            key: dict) -> dict:
    p, j = pair
    c = completion
    return {
        **key,
        "problem_id": p.id,
        "sample": j,
        "seed": seed,
        "prompt": p.prompt,
        "reasoning": c.reasoning,
        "answer": c.answer,
        "extracted": extracted,
        "gold": p.gold,
        "correct": bool(correct),
        "tokens": len(c.token_ids),
        "finish_reason": c.finish_reason,
        **({"tool_calls": [dataclasses.asdict(t) for t in c.tool_calls]} if getattr(c, "tool_calls", None) else {}),
    }


def _grade(pairs: Sequence[tuple[Problem, int]], seeds: Sequence[int], completions: Sequence[Any],
           grader: Grader, key: dict) -> list[dict]:
    problems = [p for p, _ in pairs]
    extracted = [grader.extract(c, p) for c, p in zip(completions, problems, strict=True)]
    correct = grader.check(extracted, problems)
    return [_record(*args, key) for args in zip(pairs, seeds, completions, extracted, correct, strict=True)]


def _run_batch(
    batch: Sequence[tuple[Problem, int]],
    *,
    model: Any,
    tokenizer: Any,
    generate_fn: Callable,
    grader: Grader,
    config: EvalConfig,
    chat: bool,
    key: dict,
) -> list[dict]:
    """Generate and grade one batch of (problem, sample index) pairs; one record per pair."""
    prompts = [_messages(p, chat) for p, _ in batch]
    seeds = [sample_seed(config.seed, p.id, j) for p, j in batch]
    completions = generate_fn(
        model,
        tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        seed=seeds,
    )
    if len(completions) != len(batch):
        raise R1kitError(f"generate returned {len(completions)} completions for {len(batch)} prompts")
    return _grade(batch, seeds, completions, grader, key)


def _run_continuous(
    pending: Sequence[tuple[Problem, int]],
    *,
    model: Any,
    tokenizer: Any,
    grader: Grader,
    config: EvalConfig,
    chat: bool,
    key: dict,
    matmul_dtype: Any = None,
) -> Iterator[dict]:
    """Generate every pending pair on one engine (`batch_size` rows); yield each graded record as it finishes."""
    from r1kit.generation import Engine, SamplingParams

    engine = Engine(model, tokenizer, max_batch_size=max(1, min(config.batch_size, len(pending))),
                    matmul_dtype=matmul_dtype, tools=config.tools)
    encoded = {p.id: engine.encode(_messages(p, chat))[0] for p, _ in pending}
    need = max(len(ids) for ids in encoded.values()) + config.max_new_tokens + 1
    engine.max_seq_len = min(engine.max_seq_len, -(-need // 128) * 128)  # as `generate` sizes its cache
    pairs = {}
    for p, j in pending:
        seed = sample_seed(config.seed, p.id, j)
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                top_p=config.top_p, top_k=config.top_k, seed=seed)
        pairs[engine.add_request(encoded[p.id], params).id] = ((p, j), seed)
    while engine.has_work():
        for req in engine.step():
            if req.done:
                pair, seed = pairs.pop(req.id)
                yield from _grade([pair], [seed], [req.completion()], grader, key)


def _settings(config: EvalConfig, chat: bool) -> dict:
    """What a sample depends on besides its prompt: the cache key's settings (k, limit, batching are not)."""
    fields = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "level")
    tools = {"tools": dataclasses.asdict(config.tools)} if config.tools else {}
    return {**{f: getattr(config, f) for f in fields}, "chat": chat, **tools}


def summarize(records: Sequence[dict], problems: Sequence[Problem], k: int, grader: Grader,
              tools: bool = False) -> dict:
    """Scores, length statistics and accuracy by length from the k records of every problem; with `tools`, the
    tool statistics (calls per reply, error rate, accuracy with and without a call)."""
    by_problem = {p.id: [None] * k for p in problems}
    for r in records:
        if r["problem_id"] in by_problem and r["sample"] < k:
            by_problem[r["problem_id"]][r["sample"]] = r
    rows = list(by_problem.values())
    if any(r is None for row in rows for r in row):
        raise R1kitError("internal: a sample is missing from the results")
    correct = [[r["correct"] for r in row] for row in rows]
    answers = [[r["extracted"] for r in row] for row in rows] if grader.equal else None
    flat = [r for row in rows for r in row]
    tokens = [r["tokens"] for r in flat]
    return {
        **summarize_scores(correct, answers, grader.equal or (lambda a, b: a == b)),
        "mean_tokens": sum(tokens) / len(tokens),
        "truncation_rate": sum(r["finish_reason"] == "length" for r in flat) / len(flat),
        "accuracy_by_length": accuracy_by_length(tokens, [r["correct"] for r in flat]),
        **(tool_stats([[ToolCall(**t) for t in r.get("tool_calls", [])] for r in flat], [r["correct"] for r in flat])
           if tools else {}),
    }


def evaluate(
    model: Any,
    tokenizer: Any,
    benchmark: str | Benchmark,
    *,
    config: EvalConfig | None = None,
    out_dir: str | Path | None = None,
    model_id: str | None = None,
    generate_fn: Callable | None = None,
    matmul_dtype: Any = None,
    progress: bool = False,
    **overrides: Any,
) -> dict:
    """Evaluate `model` on `benchmark` and return the summary dict.

    Args:
        benchmark: a registry name (see `list_benchmarks()`), a YAML/JSON spec path, or a `Benchmark`.
        config: an `EvalConfig`; keyword `overrides` (samples=, limit=, max_new_tokens=, temperature=,
            top_p=, seed=, batch_size=, data=, ...) replace its fields.
        out_dir: where samples.jsonl (the cache), summary.json, report.md and the plot go; None keeps
            everything in memory (no resume).
        model_id: names the model in the cache key and report; default: the model's name_or_path or class.
        generate_fn: `r1kit.generate`-compatible function called per batch (tests pass a fake); default: one
            continuous engine for an r1kit model, `r1kit.generate` for a vLLM engine.
        matmul_dtype: the engine's matmul_dtype (torch.bfloat16: bf16 matmuls on packed weights).
    Returns:
        {"benchmark", "model", "problems", "samples", "settings", "pass@1", "pass@1_stderr", "pass@k",
        ..., "cons@k" (answer benchmarks), "mean_tokens", "truncation_rate", "accuracy_by_length",
        "published", "run"}; scores are fractions in [0, 1]. Everything but "run" (timing, cache hits)
        is a deterministic function of the inputs.
    """
    from r1kit.evaluation.report import published_for, write_outputs

    try:
        config = dataclasses.replace(config or EvalConfig(), **overrides)
    except TypeError as e:
        raise ConfigError(f"evaluate: {e}; settings are the fields of EvalConfig") from None
    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    k = config.samples or bench.samples
    problems = load_problems(
        bench, data=config.data, limit=config.limit, seed=config.seed, level=config.level
    )
    grader = get_grader(bench.grader)
    chat = config.chat if config.chat is not None else bool(getattr(tokenizer, "chat_template", None))
    settings = _settings(config, chat)
    settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    key = {"model": model_id or _model_id(model), "benchmark": bench.name, "settings": settings_hash,
           "weights": model_fingerprint(model)}

    path = Path(out_dir) / SAMPLES_FILE if out_dir is not None else None
    results = _load_cache(path, key, {p.id: p.prompt for p in problems}) if path else {}
    n_cached = sum((p.id, j) in results for p in problems for j in range(k))
    pending = [(p, j) for p in problems for j in range(k) if (p.id, j) not in results]
    from tqdm.auto import tqdm

    if config.tools and pending and (generate_fn is not None or not hasattr(model, "forward_cached")):
        raise ConfigError("tools: the Python tool runs in r1kit's own engine (an r1kit model, no generate_fn)")
    if generate_fn is None and hasattr(model, "forward_cached") and pending:  # an r1kit model
        records = _run_continuous(pending, model=model, tokenizer=tokenizer, grader=grader, config=config,
                                  chat=chat, key=key, matmul_dtype=matmul_dtype)
    else:
        if generate_fn is None:
            from r1kit import generate as generate_fn
        if matmul_dtype is not None:
            generate_fn = functools.partial(generate_fn, matmul_dtype=matmul_dtype)
        batches = (pending[i : i + config.batch_size] for i in range(0, len(pending), config.batch_size))
        records = (r for batch in batches for r in _run_batch(
            batch, model=model, tokenizer=tokenizer, generate_fn=generate_fn, grader=grader, config=config,
            chat=chat, key=key))

    start = time.perf_counter()
    with tqdm(
        total=len(problems) * k, initial=n_cached, unit="sample", desc=bench.name, disable=not progress
    ) as bar:
        for r in records:
            results[(r["problem_id"], r["sample"])] = r
            if path:
                append_jsonl(path, r)
            bar.update(1)

    summary = {
        "benchmark": bench.name,
        "model": key["model"],
        "problems": len(problems),
        "samples": k,
        "grader": bench.grader,
        "settings": settings,
        **summarize(list(results.values()), problems, k, grader, tools=config.tools is not None),
        "published": published_for(bench.name),
        "run": {
            "generated": len(pending),
            "cached": n_cached,
            "seconds": round(time.perf_counter() - start, 3),
        },
    }
    if out_dir is not None:
        write_outputs(Path(out_dir), summary)
    return summary
