"""`r1kit pipeline` end to end on a shortened toy recipe, plus recipe validation and resume behaviour."""

import json

import pytest
import yaml

from r1kit.cli import main
from r1kit.errors import ConfigError
from r1kit.pipeline.recipe import DEFAULT_RECIPE, load_recipe

# The default recipe's stages shrunk to about a minute in all, on a task the toy learns in seconds (one-digit
# additions), so every stage has real work: rejection sampling finds verified answers and SFT teaches.
SHORT = [
    "tasks.tasks=[addition]", "tasks.level=1", "tasks.num_train=200", "tasks.num_test=20",
    "pretrain.data.num_docs=3000", "pretrain.data.tasks=[addition]", "pretrain.data.levels=[1]",
    "pretrain.batch.seq_len=128", "pretrain.batch.batch_size=16", "pretrain.run.steps=60",
    "pretrain.run.save_every=60", "pretrain.optim.warmup_steps=10",
    "cold_start.run.steps=80", "cold_start.tasks.num_train=200", "cold_start.batch.seq_len=128",
    "cold_start.batch.batch_size=8", "cold_start.optim.warmup_steps=2",
    "rejection.tasks.num_train=32", "rejection.sampling.samples_per_prompt=2", "rejection.sampling.max_new_tokens=32",
    "r1_sft.run.steps=80", "r1_sft.batch.seq_len=128", "r1_sft.batch.batch_size=8", "r1_sft.optim.warmup_steps=2",
    "distill.tasks.num_train=16", "distill.sampling.samples_per_prompt=1", "distill.sampling.max_new_tokens=32",
    "distill.run.steps=10", "distill.batch.seq_len=128", "distill.batch.batch_size=8", "distill.optim.warmup_steps=1",
    "evaluate.problems=20", "evaluate.samples=4", "evaluate.max_new_tokens=32",
] + [f"{stage}.{field}" for stage, steps in (("r1_zero", 4), ("r1_rl", 4), ("r1_final", 8)) for field in (
    f"run.steps={steps}", "questions_per_step=4", "num_generations=4", "max_new_tokens=32", "optim.lr=1.0e-4",
    "optim.warmup_steps=0")]


def test_short_recipe_runs_every_stage_teaches_and_writes_the_report(tmp_path, capsys):
    from r1kit.rewards import get_reward

    out = tmp_path / "run"
    args = ["pipeline", "--out", str(out), "--no-progress", "--json"] + [a for s in SHORT for a in ("--set", s)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recipe = load_recipe(None, SHORT, str(out))
    for stage in recipe.stages:
        assert (out / stage.name / "DONE").exists(), stage.name
        if stage.makes_model:
            assert (out / stage.name / "final" / "config.json").exists(), stage.name
    # rejection sampling kept only verified answers: every trace's answer is the gold one
    rows = [json.loads(line) for line in (out / "rejection" / "sft.jsonl").read_text().splitlines()]
    assert len(rows) >= 8
    for row in rows:
        reply = row["messages"][-1]
        assert get_reward("accuracy")(f"{reply['reasoning']}</think>{reply['content']}", answer=row["answer"],
                                      prefilled_think=True) == 1.0, row
    html = (out / "report.html").read_text()
    for section in ("Held-out accuracy", "RL curves", "Expert load", "Sample reasoning traces", "keeps",
                    "RL stage `r1_rl`: train reward"):
        assert section in html, section
    assert (out / "report.md").exists() and (out / "expert_load.png").exists()
    accuracy = {row["stage"]: row["mean"] for row in result["accuracy"]}
    assert list(accuracy) == [s.name for s in recipe.stages if s.makes_model]
    # the cold start teaches the base the task: held-out pass@1 (20 problems x 4 samples) rises
    assert accuracy["cold_start"] > accuracy["pretrain"] + 0.05, accuracy
    assert max(accuracy[s] for s in ("r1_rl", "r1_sft", "r1_final")) > accuracy["pretrain"], accuracy
    # a second run skips every finished stage and only re-evaluates from the cache
    assert main(args) == 0
    assert "done, skipped" in capsys.readouterr().err


def test_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="r1_zero.config: unknown field .loss_typ."):
        load_recipe(None, ["r1_zero.loss_typ=grpo"])
    with pytest.raises(ConfigError, match="learning"):
        load_recipe(None, ["r1_zero.optim.learning=1"])
    bad = yaml.safe_load(DEFAULT_RECIPE.read_text())
    bad["stages"]["r1_sft"]["data"] = "r1_final"  # a later stage
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="not an earlier stage"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="no stage named"):
        load_recipe(None).stage("r2")


def test_overrides_reach_the_stage_config_and_stages_are_wired():
    recipe = load_recipe(None, ["r1_zero.loss.beta=0.04", "seed=3"], "/tmp/x")
    zero = recipe.stage("r1_zero").config
    assert zero.loss.beta == 0.04 and zero.run.seed == 3 + 1  # the recipe's seed + the stage's index
    assert zero.model == "/tmp/x/pretrain/final" and zero.run.output_dir == "/tmp/x/r1_zero"
    assert recipe.stage("r1_sft").config.data.dataset == "/tmp/x/rejection/sft.jsonl"
    assert recipe.stage("distill").config.teacher == "/tmp/x/r1_final/final"


@pytest.mark.parametrize("recipe", sorted(p.name for p in DEFAULT_RECIPE.parent.glob("*.yaml")))
def test_every_shipped_recipe_loads(recipe, tmp_path):
    """Every recipe in src/r1kit/recipes validates (a renamed config field breaks a shipped recipe otherwise).
    Data files a recipe names under {data_dir} are stood in for by small files of the same layout."""
    import re

    path = DEFAULT_RECIPE.parent / recipe
    overrides = []
    files = re.findall(r"\{data_dir\}/([\w./-]+)", path.read_text())
    for name in files:
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"question": f"What is 1+{len(name)}?", "answer": f"1 + {len(name)}\n#### 1"}) + "\n")
    if files:
        overrides.append(f"data_dir={tmp_path}")
    r = load_recipe(path, overrides, output_dir=str(tmp_path / "out"))
    assert r.stages


def test_rerun_from_a_stage_clears_it_later_stages_and_their_evaluations_only(tmp_path):
    from r1kit.pipeline.run import clear_from

    recipe = load_recipe(None, [], str(tmp_path))
    names = [s.name for s in recipe.stages]
    k = names.index("r1_rl")
    for name in ["base"] + names:  # a finished run: every stage's outputs and evaluation samples
        (tmp_path / "eval" / name / "t").mkdir(parents=True)
        (tmp_path / "eval" / name / "t" / "samples.jsonl").write_text("{}\n")
    for name in names:
        recipe.stage_dir(name).mkdir(parents=True, exist_ok=True)
        (recipe.stage_dir(name) / "DONE").write_text("{}\n")
    clear_from(recipe, "r1_rl")
    for name in names[:k]:  # earlier models did not change: their outputs and cached samples stay
        assert (recipe.stage_dir(name) / "DONE").exists() and (tmp_path / "eval" / name).exists(), name
    assert (tmp_path / "eval" / "base" / "t" / "samples.jsonl").exists()
    for name in names[k:]:
        assert not recipe.stage_dir(name).exists() and not (tmp_path / "eval" / name).exists(), name
