"""Evaluate every stage's model on held-out questions of every task, with the R1 protocol.

Sampling at temperature 0.6 / top-p 0.95, k samples per problem, pass@1 averaged over the k samples and
cons@k (majority vote), through `r1kit.evaluation.evaluate` (cached per stage and task, so an interrupted
evaluation resumes). The prompt is the one the stages trained with (the recipe's `tasks.prompt_template`).
"""

from __future__ import annotations

import dataclasses

from r1kit.pipeline.recipe import Recipe


def evaluate_stages(recipe: Recipe, progress: bool = True) -> dict:
    """{stage: {task: summary}} for each evaluated stage (models are loaded one at a time)."""
    import r1kit
    from r1kit.evaluation import evaluate, get_benchmark
    from r1kit.pipeline.recipe import BASE

    settings = recipe.evaluate
    names = settings.stages or [s.name for s in recipe.stages if s.makes_model]
    if not settings.stages and recipe.stages[0].kind != "pretrain":
        names = [BASE, *names]  # no pretraining stage: show the starting model first
    results: dict = {}
    for name in names:
        model = r1kit.load_model(recipe.model_path(name), device=settings.device).eval()
        tokenizer = r1kit.load_tokenizer(recipe.model_path(name))
        results[name] = {}
        for task in recipe.tasks.tasks:
            bench = dataclasses.replace(get_benchmark(f"synthetic:{task}"), template=recipe.tasks.prompt_template)
            if settings.grader:
                bench = dataclasses.replace(bench, grader=settings.grader)
            results[name][task] = evaluate(
                model, tokenizer, bench, out_dir=recipe.output_dir / "eval" / name / task, model_id=name,
                samples=settings.samples, limit=settings.problems, max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature, top_p=settings.top_p, seed=recipe.seed, level=recipe.tasks.level,
                batch_size=settings.batch_size, progress=progress)
    return results
