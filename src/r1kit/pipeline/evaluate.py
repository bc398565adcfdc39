"""Evaluate every stage's model on held-out questions, with the R1 protocol.

Sampling at temperature 0.6 / top-p 0.95, k samples per problem, pass@1 averaged over the k samples and
cons@k (majority vote), through `r1kit.evaluation.evaluate` (cached per stage and evaluation set, so an
interrupted evaluation resumes). The evaluation sets are the recipe's synthetic tasks (their test split), or
with `evaluate.benchmark` a registered benchmark read from `evaluate.data` (its first `problems` rows), plus,
with `evaluate.greedy`, the same problems once at temperature 0 (the greedy accuracy most GSM8K tables give).
The prompt is the one the stages trained with (the recipe's `tasks.prompt_template`).

`check_held_out` refuses a recipe whose training questions (normalized text) include a question of the
evaluation data; synthetic tasks are disjoint by construction and are not checked. Left out: checking the
prompts of user-supplied SFT chat datasets.
"""

from __future__ import annotations

import dataclasses

from r1kit.pipeline.recipe import Recipe


def eval_names(recipe: Recipe) -> list[str]:
    """The evaluation sets, in the report's column order."""
    s = recipe.evaluate
    if s.benchmark:
        return [s.benchmark] + ([f"{s.benchmark}-greedy"] if s.greedy else [])
    return list(recipe.tasks.tasks)


def _eval_sets(recipe: Recipe) -> list[tuple[str, object, dict]]:
    """(name, Benchmark, evaluate() settings) of every evaluation set."""
    from r1kit.evaluation import get_benchmark

    s = recipe.evaluate
    protocol = {"samples": s.samples, "temperature": s.temperature, "top_p": s.top_p}
    names = eval_names(recipe)
    if s.benchmark:
        bench = dataclasses.replace(get_benchmark(s.benchmark), template=recipe.tasks.prompt_template)
        greedy = {"samples": 1, "temperature": 0.0, "top_p": 1.0}
        sets = [(names[0], bench, {**protocol, "data": s.data})]
        sets += [(names[1], bench, {**greedy, "data": s.data})] if s.greedy else []
    else:
        sets = [(task, dataclasses.replace(get_benchmark(f"synthetic:{task}"), template=recipe.tasks.prompt_template),
                 {**protocol, "level": recipe.tasks.level}) for task in names]
    if s.grader:
        sets = [(name, dataclasses.replace(bench, grader=s.grader), kw) for name, bench, kw in sets]
    return sets


def check_held_out(recipe: Recipe) -> None:
    """Raise R1kitError when a question some stage trains on (a task dataset) is in the evaluation data."""
    from r1kit.data.gsm8k import check_disjoint
    from r1kit.evaluation import get_benchmark, load_problems
    from r1kit.training.tasks import load_examples

    s = recipe.evaluate
    if not s.benchmark:
        return
    task_data = [recipe.tasks] + [getattr(st.config, st.spec.tasks_field) for st in recipe.stages
                                  if st.spec.tasks_field and hasattr(st.config, st.spec.tasks_field)]
    datasets = {(t.dataset, t.layout): t for t in task_data if t.dataset}
    if not datasets:
        return
    held_out = [p.fields["question"] for p in load_problems(get_benchmark(s.benchmark), data=s.data)]
    for (dataset, _), data in datasets.items():
        check_disjoint([ex["question"] for ex in load_examples(data, "train", recipe.seed)], held_out,
                       train_name=f"the training data {dataset}",
                       held_name=f"the {s.benchmark} evaluation data {s.data or '(default file)'}")


def evaluate_stages(recipe: Recipe, progress: bool = True) -> dict:
    """{stage: {evaluation set: summary}} for each evaluated stage (models are loaded one at a time)."""
    import torch

    import r1kit
    from r1kit.evaluation import evaluate
    from r1kit.pipeline.recipe import BASE

    settings = recipe.evaluate
    names = settings.stages or [s.name for s in recipe.stages if s.makes_model]
    if not settings.stages and recipe.stages[0].kind != "pretrain":
        names = [BASE, *names]  # no pretraining stage: show the starting model first
    matmul_dtype = torch.bfloat16 if settings.matmul_dtype == "bfloat16" else None
    results: dict = {}
    for name in names:
        model = r1kit.load_model(recipe.model_path(name), device=settings.device).eval()
        tokenizer = r1kit.load_tokenizer(recipe.model_path(name))
        results[name] = {}
        for set_name, bench, kw in _eval_sets(recipe):
            results[name][set_name] = evaluate(
                model, tokenizer, bench, out_dir=recipe.output_dir / "eval" / name / set_name, model_id=name,
                limit=settings.problems, max_new_tokens=settings.max_new_tokens, seed=recipe.seed,
                batch_size=settings.batch_size, matmul_dtype=matmul_dtype, tools=settings.tools, progress=progress,
                **kw)
    return results
