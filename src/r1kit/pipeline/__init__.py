"""`r1kit pipeline`: the whole DeepSeek-R1 system, stage by stage, from one recipe."""

from __future__ import annotations

import argparse

HELP = """\
Run the DeepSeek-R1 recipe end to end. With no RECIPE, the embedded toy recipe trains a small DeepSeek-V3
model (MLA, MoE with shared + routed experts and bias balancing, MTP) on synthetic reasoning tasks:

  pretrain     pretrain the base model on a synthetic corpus
  r1_zero      R1-Zero: GRPO straight from the base model (accuracy + format rewards)
  cold_start   R1 stage 1: SFT on a small set of worked <think> solutions
  r1_rl        R1 stage 2: reasoning GRPO (accuracy + format + language consistency)
  rejection    R1 stage 3a: sample from the RL model, keep verified answers
  r1_sft       R1 stage 3b: SFT the base model on the verified samples
  r1_final     R1 stage 4: a final GRPO round
  distill      distill the final model into a smaller dense (Qwen2-style) student
  then every stage's model is evaluated (R1 protocol: T=0.6, top-p 0.95, pass@1 over k samples, cons@k)
  and a report (report.html, report.md, plots) is written to the output directory.

Finished stages are skipped, so re-running the same command resumes after Ctrl-C; --from reruns from a stage.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the R1 pipeline end to end (default: the toy recipe)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="recipe YAML (default: the embedded toy recipe, recipes/r1_toy.yaml)")
    p.add_argument("--out", help="output directory (overrides the recipe's output_dir)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun from this stage on")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field: STAGE.FIELD=VALUE (e.g. r1_zero.loss.beta=0.04) or a top-level field")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--device", help="the device of every stage and of the evaluation: auto | cpu | cuda | cuda:N "
                                    "(default: the recipe's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    import json

    from r1kit.pipeline.evaluate import eval_names
    from r1kit.pipeline.recipe import load_recipe
    from r1kit.pipeline.report import accuracy_rows
    from r1kit.pipeline.run import run_pipeline

    recipe = load_recipe(args.recipe, args.overrides, args.out)  # every config validated before any work
    if args.device:
        from r1kit.device import resolve_device

        resolve_device(args.device)  # a one-line error now, not at the first training stage
        for stage in recipe.stages:
            (stage.config.run if hasattr(stage.config, "run") else stage.config).device = args.device
        recipe.evaluate.device = args.device
    if args.from_stage:
        recipe.stage(args.from_stage)
    out = run_pipeline(recipe, from_stage=args.from_stage, progress=not args.no_progress)
    rows = accuracy_rows(recipe, out["results"])
    if args.json:
        print(json.dumps({"report": out["report"], "accuracy": rows, "timings": out["timings"]}))
        return 0
    tasks = eval_names(recipe)
    print(f"\nHeld-out pass@1 (%), {recipe.evaluate.samples} samples per problem at T={recipe.evaluate.temperature}"
          + (" (greedy: one sample at T=0)" if recipe.evaluate.greedy else "") + ":")
    print(f"{'stage':<12}" + "".join(f"{t:>14}" for t in tasks) + f"{'mean':>8}")
    for r in rows:
        print(f"{r['stage']:<12}" + "".join(f"{100 * r[t]:>9.1f}±{100 * r[f'{t} stderr']:<4.1f}" for t in tasks)
              + f"{100 * r['mean']:>8.1f}")
    print(f"\nReport: {out['report']}")
    return 0
