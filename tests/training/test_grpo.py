"""The GRPO recipe end to end on the toy model: it learns, it resumes exactly, it rejects bad configs early."""

import importlib.util
import json
import shutil

import pytest
import torch

from r1kit.config import load_config
from r1kit.errors import ConfigError
from r1kit.rewards import REWARDS
from r1kit.training.grpo import GRPOConfig, pack, train


@pytest.fixture
def sevens_reward(monkeypatch):
    """A reward the random toy model can reach: the share of '7' characters in the reply."""
    monkeypatch.setitem(REWARDS, "sevens", lambda completion, **_: completion.count("7") / max(len(completion), 1))


def toy_config(tmp_path, **overrides):
    base = {
        "model": "toy-moe", "rewards": {"sevens": 1.0}, "questions_per_step": 2, "num_generations": 8,
        "max_new_tokens": 12, "micro_batch_size": 8,
        "run": {"output_dir": str(tmp_path / "run"), "steps": 30, "save_every": 10, "progress": False, "seed": 1},
        "optim": {"lr": 3e-3, "max_grad_norm": 1.0},
        "data": {"tasks": ["addition"], "level": 2, "num_train": 64, "num_test": 8},
    }
    for k, v in overrides.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return load_config(GRPOConfig, overrides=base)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_learns_a_reachable_reward(tmp_path, sevens_reward):
    cfg = toy_config(tmp_path)
    train(cfg)
    rewards = [m["reward"] for m in metrics(tmp_path / "run")]
    assert sum(rewards[-5:]) / 5 > 3 * sum(rewards[:5]) / 5 + 0.05, rewards
    assert (tmp_path / "run" / "final" / "config.json").exists()
    assert (tmp_path / "run" / "metrics.png").exists()
    m = metrics(tmp_path / "run")[-1]
    for key in ("accuracy", "frac_zero_std", "completion_len", "truncated", "entropy", "grad_norm",
                "clip_ratio/region", "lr", "rollout_tok_s", "step_s", "expert_load_max", "logprob_diff_max"):
        assert key in m, key
    assert m["logprob_diff_max"] < 1e-3  # the engine and the trainer score with the same weights


def test_resume_after_interruption_reproduces_metrics(tmp_path, sevens_reward):
    cfg = toy_config(tmp_path, run={"steps": 6, "save_every": 3}, num_iterations=2,
                     loss={"beta": 0.04, "loss_type": "dapo", "epsilon_high": 0.28})
    train(cfg)
    straight = metrics(tmp_path / "run")
    # Simulate a kill during step 5: the step-6 checkpoint, the export and the later metrics are gone.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000006")
    shutil.rmtree(tmp_path / "run" / "final")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines[:4]) + '\n{"step": 5, "rew')  # torn line
    train(cfg)
    resumed = metrics(tmp_path / "run")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    volatile = {"step_s", "rollout_tok_s"}
    for a, b in zip(straight, resumed):
        for k in a:
            if k not in volatile:
                assert b[k] == (a[k] if a[k] is None else pytest.approx(a[k], rel=1e-5, abs=1e-7)), (a["step"], k)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_rollouts_follow_the_policy_after_every_step(tmp_path, sevens_reward, monkeypatch):
    """With rollout_backend=vllm the policy's weights are pushed into vLLM after each optimizer step: the
    log-probs vLLM sampled with then match the trainer's own, step after step, while a large learning rate
    moves the weights (a missed sync would show as a diff of the size of the update)."""
    import r1kit
    from r1kit.models.config import get_preset
    from r1kit.models.transformer import Transformer
    from r1kit.tokenizer import toy_tokenizer

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = get_preset("toy-dense").replace(dim=128, n_heads=4, n_kv_heads=2, head_dim=0, max_seq_len=256)
    torch.manual_seed(0)
    path = r1kit.save_model(Transformer(cfg), tmp_path / "init", tokenizer=toy_tokenizer())
    config = toy_config(tmp_path, model=str(path), run={"steps": 4, "save_every": 4}, rollout_backend="vllm",
                        vllm={"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3})
    train(config)
    steps = metrics(tmp_path / "run")
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert all(m["logprob_diff_max"] < 1e-3 for m in steps), [m["logprob_diff_max"] for m in steps]
    assert steps[-1]["reward"] != steps[0]["reward"]


def test_bf16_rollouts_differ_from_the_trainer_by_rounding_only(tmp_path, sevens_reward):
    train(toy_config(tmp_path, run={"steps": 3, "save_every": 3}, rollout_dtype="bfloat16", loss={"tis_cap": 2.0}))
    diffs = [m["logprob_diff_max"] for m in metrics(tmp_path / "run")]
    assert all(0 < d < 0.1 for d in diffs), diffs  # fp32 rollouts agree to ~1e-6 (test above)


def test_questions_are_drawn_stratified_by_task_and_reproducibly():
    from r1kit.training.grpo import draw_questions

    train = [{"task": t, "id": f"{t}{i}"} for t in ("a", "b", "c") for i in range(40)] + \
        [{"task": "d", "id": "d0"}]
    for step in range(1, 20):
        drawn = draw_questions(train, step, seed=0, n=8)
        counts = {t: sum(ex["task"] == t for ex in drawn) for t in "abc"}
        assert len(drawn) == 8 and len({ex["id"] for ex in drawn}) == 8
        assert sorted(counts.values()) in ([2, 2, 3], [2, 3, 3]), counts  # d's one question, its share moved on
        assert drawn == draw_questions(train, step, seed=0, n=8)
    assert draw_questions(train, 1, seed=0, n=8) != draw_questions(train, 1, seed=1, n=8)


def test_pack_layout():
    ids, attn, cmask, P = pack([[5, 6], [7]], [[1, 2, 3], [4]], pad_id=0)
    assert P == 2
    assert ids.tolist() == [[5, 6, 1, 2, 3], [0, 7, 4, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert cmask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("overrides, field", [
    ({"loss": {"loss_type": "ppo"}}, r"loss\.loss_type: Input should be 'grpo', 'bnpo', 'dr_grpo' or 'dapo'"),
    ({"loss": {"beta": -0.1}}, r"loss\.beta"),
    ({"loss_type": "dapo"}, "unknown field 'loss_type'"),
    ({"dynamic_sampling_metric": "length"}, "dynamic_sampling_metric"),
    ({"num_generations": 1}, "num_generations"),
    ({"rewards": {"nonsense": 1.0}}, "nonsense"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"learning_rate": 1e-5}, "learning_rate"),
    ({"data": {"tasks": ["poetry"]}}, "poetry"),
    ({"rollout_backend": "sglang"}, "rollout_backend"),
    ({"rollout_dtype": "float16"}, "rollout_dtype"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(GRPOConfig, overrides=overrides)


def test_dynamic_sampling_keeps_groups_by_accuracy_not_by_reward():
    """DAPO keeps groups whose accuracy is strictly between 0 and 1; a group that is all wrong (or all right)
    but whose rewards differ through a format term carries no accuracy signal and is dropped."""
    from r1kit.training.grpo import Rollout, informative_groups

    correct = torch.tensor([0., 0., 0., 0., 1., 0., 1., 1., 1., 1., 1., 1.])  # groups of 4: none, half, all
    rewards = correct + torch.tensor([0.2, 0., 0.2, 0., 0.2, 0.2, 0.2, 0., 0.2, 0.2, 0.2, 0.2])  # + format
    r = Rollout([{}] * 12, [[1]] * 12, [None] * 12, rewards, correct, {}, 0.0)
    assert informative_groups(r, 4, "accuracy").tolist() == [False, True, False]
    assert informative_groups(r, 4, "reward").tolist() == [True, True, False]


def test_dynamic_sampling_logs_the_first_draws_accuracy(monkeypatch):
    """The kept rollout mixes right and wrong by construction; collect also returns the accuracy of the step's
    first draw over every group (here 8 of 12 right), which is what the policy scores."""
    from r1kit.training import grpo

    draws = [torch.tensor([1., 1., 1., 1., 1., 0., 1., 0., 0., 0., 1., 1.]),  # groups: all, half, mixed
             torch.tensor([0., 1., 0., 1., 0., 0., 0., 0., 1., 1., 1., 1.])]

    def fake_rollout(engine, questions, cfg, step, round_=0):
        c = draws[round_]
        return grpo.Rollout([{}] * 12, [[1]] * 12, [None] * 12, c.clone(), c, {}, 0.0)

    monkeypatch.setattr(grpo, "rollout", fake_rollout)
    cfg = load_config(GRPOConfig, overrides={"questions_per_step": 3, "num_generations": 4, "dynamic_sampling": True})
    train = [{"question": f"q{i}", "answer": "1"} for i in range(10)]
    r, frac_zero_std, drawn = grpo.collect(None, train, cfg, step=1)
    assert drawn == pytest.approx(8 / 12) and frac_zero_std == pytest.approx(1 / 3)
    assert r.correct.tolist() == [1., 0., 1., 0., 0., 0., 1., 1., 0., 1., 0., 1.]  # 2 kept + 1 from round 2


class _GradRecorder:
    """Stands in for the optimizer: keeps a copy of the gradients each step would apply."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def step(self):
        self.steps.append({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_step_gradient_does_not_depend_on_micro_batch_size(loss_type):
    """One GRPO step over 12 completions cut into micro-batches of 12 or 5 (an uneven last slice of 2) accumulates
    the same gradient: the normalizers come from the whole step."""
    from types import SimpleNamespace

    import r1kit
    from r1kit.generation import Completion
    from r1kit.training.grpo import Rollout, policy_update

    g = torch.Generator().manual_seed(0)
    lengths = [3, 7, 1, 5, 6, 2, 4, 4, 7, 3, 5, 6]
    completions = [Completion("", "", "", torch.randint(3, 40, (n,), generator=g).tolist(), [-1.0] * n, "stop")
                   for n in lengths]
    rewards = torch.tensor([1., 0., 0., 1., 0.5, 0., 1., 1., 0., 1., 0., 0.])
    r = Rollout([{}] * 12, [[1, 5, 6]] * 6 + [[1, 9]] * 6, completions, rewards, rewards, {}, 0.0)
    grads = []
    for micro in (12, 5):
        model = r1kit.load_model("toy-dense", seed=0).train()
        run = SimpleNamespace(model=model, optimizer=_GradRecorder(model), scheduler=SimpleNamespace(step=lambda: 0))
        cfg = load_config(GRPOConfig, overrides={"model": "toy-dense", "num_generations": 6, "max_new_tokens": 8,
                                                 "micro_batch_size": micro, "loss": {"loss_type": loss_type}})
        policy_update(run, cfg, r, None, cfg.loss)
        grads.append(run.optimizer.steps[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-8, msg=name)


def test_completion_logps_mask_left_padding():
    """Trainer log-probs of a left-padded batch equal those of each sequence alone."""
    import r1kit
    from r1kit.training.grpo import completion_logps

    model = r1kit.load_model("toy-moe").eval()
    ids, attn, _, P = pack([[1, 5, 6, 7], [1, 9]], [[10, 11, 12], [13, 14]], pad_id=0)
    with torch.no_grad():
        batch, _ = completion_logps(model, ids, attn, P, temperature=0.7)
        alone, _ = completion_logps(model, torch.tensor([[1, 9, 13, 14]]), torch.ones(1, 4, dtype=torch.long), 2, 0.7)
    assert torch.allclose(batch[1, :2], alone[0], atol=1e-5)


def test_tool_output_tokens_are_attended_but_get_no_gradient():
    """A rollout whose replies hold tool output (model_mask False): the trainer scores the exact sampled ids, and
    its step gradient equals the hand-written GRPO gradient over the model's tokens only,
    -1/B sum_i A_i / |M_i| sum_{t in M_i} grad log p(y_t | prompt, y_<t) (on-policy ratio 1, beta 0), with the tool
    tokens still in every later token's context."""
    from types import SimpleNamespace

    import r1kit
    from r1kit.generation import Completion
    from r1kit.training.grpo import Rollout, policy_update

    g = torch.Generator().manual_seed(1)
    masks = [[True, True, False, False, False, True, True], [True] * 4, [True, False, False, True, True, True]]
    prompts = [[1, 5, 6], [1, 5, 6], [1, 9]]
    completions = []
    for m in masks:
        ids = torch.randint(3, 40, (len(m),), generator=g).tolist()
        completions.append(Completion("", "", "", ids, [0.0 if not k else -1.0 for k in m], "stop", model_mask=m))
    ids, _, cmask, P = pack(prompts, [c.token_ids for c in completions], 0,
                            [c.model_token_mask() for c in completions])
    for i, c in enumerate(completions):  # the trainer's rows are the sampled ids, tool output included
        assert ids[i, P - len(prompts[i]):P + len(c.token_ids)].tolist() == prompts[i] + c.token_ids
        assert cmask[i, : len(c.token_ids)].tolist() == [float(k) for k in masks[i]]
    rewards = torch.tensor([1.0, 0.0, 0.5])
    r = Rollout([{}] * 3, prompts, completions, rewards, rewards, {}, 0.0)
    model = r1kit.load_model("toy-dense", seed=0).train()
    run = SimpleNamespace(model=model, optimizer=_GradRecorder(model), scheduler=SimpleNamespace(step=lambda: 0))
    cfg = load_config(GRPOConfig, overrides={"model": "toy-dense", "num_generations": 3, "max_new_tokens": 8,
                                             "micro_batch_size": 2, "optim": {"max_grad_norm": 1e9}})
    policy_update(run, cfg, r, None, cfg.loss)
    got = run.optimizer.steps[0]

    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)  # one group of 3
    model.zero_grad(set_to_none=True)
    loss = 0.0
    for i, c in enumerate(completions):
        seq = torch.tensor([prompts[i] + c.token_ids])
        logp = model(seq)[0, len(prompts[i]) - 1:-1].log_softmax(-1)  # predicts each completion token
        tok_logp = logp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
        kept = torch.tensor(masks[i])
        loss = loss - adv[i] * tok_logp[kept].sum() / kept.sum() / len(completions)
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)
