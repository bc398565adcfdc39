"""The GSM8K recipe (recipes/r1_smollm2_gsm8k.yaml): its data root, its missing-file error, the leakage check, and
one tiny end-to-end run of its structure on the toy model. Data files are written here in GSM8K's layout (a fresh
clone has no ../shared/data)."""

import json
from pathlib import Path

import pytest

from r1kit.cli import main
from r1kit.errors import R1kitError
from r1kit.pipeline.evaluate import check_held_out
from r1kit.pipeline.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "src" / "r1kit" / "recipes" / "r1_smollm2_gsm8k.yaml"


def _row(a: int, b: int) -> dict:
    return {"question": f"Tom has {a} apples and buys {b} more. How many apples does Tom have?",
            "answer": f"Tom has {a}+{b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}


def write_gsm8k(root: Path, train: list[dict], test: list[dict]) -> Path:
    (root / "gsm8k").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (root / "gsm8k" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_data_dir_fills_every_path_and_stages_are_wired(tmp_path):
    root = write_gsm8k(tmp_path / "data", [_row(1, 2)], [_row(3, 4)])
    recipe = load_recipe(RECIPE, [f"data_dir={root}"], str(tmp_path / "run"))
    train = str(root / "gsm8k" / "train.jsonl")
    assert recipe.tasks.dataset == train and recipe.tasks.layout == "gsm8k"
    assert recipe.evaluate.data == str(root / "gsm8k" / "test.jsonl")
    assert (recipe.evaluate.benchmark, recipe.evaluate.problems, recipe.evaluate.samples) == ("gsm8k", 500, 4)
    assert (recipe.evaluate.temperature, recipe.evaluate.top_p, recipe.evaluate.greedy) == (0.6, 0.95, True)
    cold, rl = recipe.stage("cold_start").config, recipe.stage("r1_rl").config
    assert cold.tasks.dataset == train and rl.data.dataset == train
    assert cold.model == "smollm2-135m" and rl.model == str(tmp_path / "run" / "cold_start" / "final")
    assert set(rl.rewards) == {"accuracy", "format"} and rl.max_new_tokens >= 256


def test_missing_data_file_is_named(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(R1kitError, match=f"data file not found: {root}/gsm8k/train.jsonl"):
        load_recipe(RECIPE, [f"data_dir={root}"])
    (root / "gsm8k").mkdir()
    (root / "gsm8k" / "train.jsonl").write_text(json.dumps(_row(1, 2)) + "\n")
    with pytest.raises(R1kitError, match=f"data file not found: {root}/gsm8k/test.jsonl"):
        load_recipe(RECIPE, [f"data_dir={root}"])


def test_a_training_question_in_the_test_set_stops_the_pipeline(tmp_path, capsys):
    leaked = dict(_row(5, 6), question="  tom has 5 apples and BUYS 6 more.  How many apples does Tom have ")
    root = write_gsm8k(tmp_path / "data", [_row(1, 2), _row(5, 6)], [_row(3, 4), leaked])
    recipe = load_recipe(RECIPE, [f"data_dir={root}"], str(tmp_path / "run"))
    with pytest.raises(R1kitError, match="1 question.* of the training data .*train.jsonl are also in the gsm8k"):
        check_held_out(recipe)
    # the command stops before any stage runs
    args = ["pipeline", str(RECIPE), "--set", f"data_dir={root}", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    assert "1 question(s) of the training data" in capsys.readouterr().err
    assert not (tmp_path / "run" / "cold_start").exists()
    clean = write_gsm8k(tmp_path / "clean", [_row(1, 2), _row(5, 6)], [_row(3, 4)])
    check_held_out(load_recipe(RECIPE, [f"data_dir={clean}"]))  # disjoint: no error


def test_the_recipe_runs_end_to_end_on_the_toy_model(tmp_path, capsys):
    """The recipe's stages, data and evaluation as shipped, shrunk to seconds on the toy model."""
    root = write_gsm8k(tmp_path / "data", [_row(a, a + 1) for a in range(1, 9)], [_row(30, 4), _row(20, 5)])
    tiny = [f"data_dir={root}", "model=toy-moe",
            "cold_start.run.steps=2", "cold_start.batch.seq_len=256", "cold_start.batch.batch_size=2",
            "cold_start.optim.warmup_steps=1",
            "r1_rl.run.steps=1", "r1_rl.optim.warmup_steps=0", "r1_rl.questions_per_step=2", "r1_rl.num_generations=2", "r1_rl.max_new_tokens=8",
            "evaluate.problems=2", "evaluate.samples=2", "evaluate.max_new_tokens=8", "evaluate.batch_size=4"]
    out = tmp_path / "run"
    args = ["pipeline", str(RECIPE), "--out", str(out), "--no-progress", "--json"] + [a for s in tiny for a in ("--set", s)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["stage"] for r in result["accuracy"]] == ["base", "cold_start", "r1_rl"]
    for stage in ("base", "cold_start", "r1_rl"):
        sampled = [json.loads(x) for x in (out / "eval" / stage / "gsm8k" / "samples.jsonl").read_text().splitlines()]
        greedy = [json.loads(x) for x in (out / "eval" / stage / "gsm8k-greedy" / "samples.jsonl").read_text().splitlines()]
        assert sorted((r["gold"], r["sample"]) for r in sampled) == [("25", 0), ("25", 1), ("34", 0), ("34", 1)]
        assert sorted(r["gold"] for r in greedy) == ["25", "34"] and all(r["sample"] == 0 for r in greedy)
        assert all(r["prompt"].endswith("put your final answer within \\boxed{}.") for r in sampled + greedy)
    report = (out / "report.md").read_text()
    assert "gsm8k pass@1" in report and "gsm8k-greedy pass@1" in report and "truncated" in report
    assert "gsm8k cons@2" in report and "gsm8k-greedy cons@" not in report  # one greedy sample: no vote
