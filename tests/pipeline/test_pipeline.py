"""`r1kit pipeline` end to end on a shortened toy recipe, plus recipe validation and resume behaviour."""

import json

import pytest
import yaml

from r1kit.cli import main
from r1kit.errors import ConfigError
from r1kit.pipeline.recipe import DEFAULT_RECIPE, load_recipe

SHORT = [  # the default recipe's stages, shrunk to seconds each
    "tasks.num_train=64", "tasks.num_test=8",
    "pretrain.data.num_docs=300", "pretrain.run.steps=6", "pretrain.run.save_every=6", "pretrain.batch.batch_size=4",
    "pretrain.optim.warmup_steps=2", "cold_start.optim.warmup_steps=1", "r1_sft.optim.warmup_steps=1",
    "distill.optim.warmup_steps=1",
    "r1_zero.run.steps=2", "r1_zero.questions_per_step=2", "r1_zero.num_generations=2", "r1_zero.max_new_tokens=16",
    "cold_start.run.steps=3", "cold_start.tasks.num_train=16", "cold_start.batch.batch_size=4",
    "r1_rl.run.steps=2", "r1_rl.questions_per_step=2", "r1_rl.num_generations=2", "r1_rl.max_new_tokens=16",
    "rejection.tasks.num_train=8", "rejection.sampling.samples_per_prompt=2", "rejection.sampling.max_new_tokens=16",
    "r1_sft.run.steps=2", "r1_sft.batch.batch_size=4",
    "r1_final.run.steps=2", "r1_final.questions_per_step=2", "r1_final.num_generations=2",
    "r1_final.max_new_tokens=16",
    "distill.tasks.num_train=8", "distill.sampling.samples_per_prompt=2", "distill.sampling.max_new_tokens=16",
    "distill.run.steps=2", "distill.batch.batch_size=4",
    "evaluate.problems=3", "evaluate.samples=2", "evaluate.max_new_tokens=16",
]


def test_short_recipe_runs_every_stage_and_writes_the_report(tmp_path, capsys, monkeypatch):
    # A toy trained for seconds answers nothing correctly, so rejection sampling would keep nothing; keep every
    # finished reply here so the later stages get data (the filters have their own tests).
    from r1kit.rewards import split_reasoning
    from r1kit.training import rejection

    def keep_finished(c, f):
        if c.finish_reason == "length":
            return "truncated"
        return None if (split_reasoning(c.text)[1] or "").strip() else "format"

    monkeypatch.setattr(rejection, "reject_reason", keep_finished)
    out = tmp_path / "run"
    args = ["pipeline", "--out", str(out), "--no-progress", "--json"] + [a for s in SHORT for a in ("--set", s)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recipe = load_recipe(None, SHORT, str(out))
    for stage in recipe.stages:
        assert (out / stage.name / "DONE").exists(), stage.name
        if stage.makes_model:
            assert (out / stage.name / "final" / "config.json").exists(), stage.name
    assert (out / "rejection" / "sft.jsonl").exists()
    html = (out / "report.html").read_text()
    for section in ("Held-out accuracy", "RL curves", "Expert load", "Sample reasoning traces", "keeps"):
        assert section in html, section
    assert (out / "report.md").exists() and (out / "expert_load.png").exists()
    stages = [row["stage"] for row in result["accuracy"]]
    assert stages == [s.name for s in recipe.stages if s.makes_model]
    for row in result["accuracy"]:
        assert 0.0 <= row["mean"] <= 1.0
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
    assert zero.loss.beta == 0.04 and zero.run.seed == 3
    assert zero.model == "/tmp/x/pretrain/final" and zero.run.output_dir == "/tmp/x/r1_zero"
    assert recipe.stage("r1_sft").config.data.dataset == "/tmp/x/rejection/sft.jsonl"
    assert recipe.stage("distill").config.teacher == "/tmp/x/r1_final/final"
