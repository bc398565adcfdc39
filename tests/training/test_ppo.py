"""`r1kit ppo` end to end on the toy models: it learns a reachable reward, resumes exactly (critic included),
validates its config, and is a pipeline stage kind. GAE and the value loss are checked against hand-computed
values in test_advantages.py and test_value.py."""

import json
import shutil

import pytest
import yaml

from r1kit.config import load_config
from r1kit.errors import ConfigError
from r1kit.rewards import REWARDS
from r1kit.training.ppo import PPOConfig, train


@pytest.fixture
def sevens_reward(monkeypatch):
    """A reward the random toy model can reach: the share of '7' characters in the reply."""
    monkeypatch.setitem(REWARDS, "sevens", lambda completion, **_: completion.count("7") / max(len(completion), 1))


def toy_config(tmp_path, **overrides):
    base = {
        "model": "toy-dense", "rewards": {"sevens": 1.0}, "questions_per_step": 2, "num_generations": 8,
        "max_new_tokens": 12, "micro_batch_size": 16,
        "run": {"output_dir": str(tmp_path / "run"), "steps": 15, "save_every": 5, "progress": False, "seed": 1},
        "optim": {"lr": 5e-3}, "value_optim": {"lr": 5e-3},
        "data": {"tasks": ["addition"], "level": 2, "num_train": 64, "num_test": 8},
    }
    for k, v in overrides.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return load_config(PPOConfig, overrides=base)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_learns_a_reachable_reward(tmp_path, sevens_reward):
    train(toy_config(tmp_path))
    steps = metrics(tmp_path / "run")
    rewards = [m["reward"] for m in steps]
    assert len(rewards) == 15
    assert sum(rewards[-5:]) / 5 > 3 * sum(rewards[:5]) / 5 + 0.1, rewards
    assert (tmp_path / "run" / "final" / "config.json").exists()  # the policy is exported
    assert (tmp_path / "run" / "metrics.png").exists()
    assert (tmp_path / "run" / "critic" / "checkpoints" / "step-00000015" / "model" / "critic.safetensors").exists()
    m = steps[-1]
    for key in ("accuracy", "value_loss", "explained_variance", "value_clip_fraction", "value_grad_norm",
                "grad_norm", "entropy", "clip_ratio/region", "adv_std", "value_lr", "step_s"):
        assert key in m, key
    assert m["logprob_diff_max"] < 1e-3  # the engine and the trainer score with the same weights


def test_resume_restores_policy_and_critic(tmp_path, sevens_reward):
    """A critic of another architecture (the MoE preset), two PPO epochs per rollout, KL in the reward. A kill
    after the critic's step-4 checkpoint but before the policy's: the run resumes from step 2 (both models)
    and repeats the metrics."""
    cfg = toy_config(tmp_path, value_model="toy-moe", max_new_tokens=8, num_iterations=2, kl_coef=0.05,
                     run={"steps": 4, "save_every": 2})
    train(cfg)
    straight = metrics(tmp_path / "run")
    assert (tmp_path / "run" / "critic" / "checkpoints" / "step-00000004").is_dir()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000004")
    shutil.rmtree(tmp_path / "run" / "final")
    train(cfg)
    resumed = metrics(tmp_path / "run")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        for k in a:
            if k not in {"step_s", "rollout_tok_s"}:
                assert b[k] == (a[k] if a[k] is None else pytest.approx(a[k], rel=1e-5, abs=1e-7)), (a["step"], k)


@pytest.mark.parametrize("overrides, field", [
    ({"vf_clip": -0.1}, "vf_clip"),
    ({"gamma": 1.5}, "gamma"),
    ({"lam": -1}, "lam"),
    ({"value_optim": {"lr": "fast"}}, r"value_optim\.lr"),
    ({"kl_coef": -0.1}, "kl_coef"),
    ({"scale_rewards": "batch"}, "scale_rewards"),
    ({"critic_lr": 1e-5}, "critic_lr"),
    ({"loss": {"epsilon_low": 2}}, r"loss\.epsilon_low"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(PPOConfig, overrides=overrides)


def test_one_generation_per_question_is_allowed():
    assert load_config(PPOConfig, overrides={"num_generations": 1}).num_generations == 1


def test_pipeline_stage_of_kind_ppo(tmp_path):
    from r1kit.pipeline.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": "toy-dense", "seed": 3, "tasks": {"tasks": ["addition"], "level": 2},
        "stages": {"sft": {"kind": "sft"}, "rl": {"kind": "ppo", "init": "sft", "config": {"lam": 0.9}}},
    }, sort_keys=False))
    recipe = load_recipe(path, output_dir=str(tmp_path / "out"))
    stage = recipe.stages[-1]
    assert isinstance(stage.config, PPOConfig)
    assert stage.config.model == str(tmp_path / "out" / "sft" / "final")
    assert stage.config.data.tasks == ["addition"] and stage.config.lam == 0.9
    assert stage.config.run.output_dir == str(tmp_path / "out" / "rl")
