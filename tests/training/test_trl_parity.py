"""The same fixed batch through TRL's GRPOTrainer loss and through r1kit's `grpo_loss`.

TRL computes the loss in `GRPOTrainer._compute_loss(model, inputs)`. Building a full trainer needs a model, a
tokenizer and a dataset, so the test makes a bare instance (`object.__new__`), sets the attributes that method
reads, and replaces the model forward `_get_per_token_logps_and_entropies` with fixed log-probs. What runs is
TRL's own loss code on our tensors, offline, in well under a second after the import.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from r1kit.training.advantages import group_advantages
from r1kit.training.losses import GRPOLossConfig, grpo_loss

grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")

B, G, T, MAX_LEN, ACCUM = 6, 3, 5, 7, 2


class _SingleProcess:
    num_processes = 1

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def trl_loss(cfg: GRPOLossConfig, logps, inputs, *, use_bias_correction_kl=False, tis=False):
    trainer = object.__new__(grpo_trainer.GRPOTrainer)
    trainer.__dict__.update(
        loss_type=cfg.loss_type,
        epsilon_low=cfg.epsilon_low,
        epsilon_high=cfg.epsilon_high,
        beta=cfg.beta,
        max_completion_length=cfg.max_completion_length,
        importance_sampling_level="token",
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=tis,
        vllm_importance_sampling_correction=tis,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=ACCUM,
        accelerator=_SingleProcess(),
        model=SimpleNamespace(training=True),
        _metrics={"train": defaultdict(list)},
        # one generation batch feeds two optimizer steps of ACCUM micro-batches each
        args=SimpleNamespace(
            use_bias_correction_kl=use_bias_correction_kl, delta=None, steps_per_generation=2 * ACCUM
        ),
    )
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    loss = trainer._compute_loss(None, inputs)
    return loss, trainer._metrics["train"]


def fixed_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g) * 2
    mask = (torch.arange(T) < torch.tensor([5, 2, 4, 1, 5, 3]).unsqueeze(1)).long()
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 2.0])
    return {
        "logps": logps,
        "old": logps + 0.3 * torch.randn(B, T, generator=g),
        "ref": logps + 0.2 * torch.randn(B, T, generator=g),
        "rollout": logps + 0.3 * torch.randn(B, T, generator=g),
        "mask": mask,
        "adv": group_advantages(rewards, G, "group"),
        # dapo: completion tokens over the whole accumulated batch (here this micro-batch and another of 9)
        "num_items_in_batch": mask.sum() + 9,
    }


def run_both(cfg, data, *, off_policy, use_bias_correction_kl=False, tis=False):
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": data["mask"],
        "advantages": data["adv"],
        # TRL counts the whole generation batch (two optimizer steps) and rescales to one accumulation window
        "num_items_in_batch": data["num_items_in_batch"] * 2,
    }
    if off_policy or tis:
        inputs["old_per_token_logps"] = data["old"]
    if cfg.beta:
        inputs["ref_per_token_logps"] = data["ref"]
    if tis:  # what TRL computes at generation time in token_truncate mode
        inputs["importance_sampling_ratio"] = torch.exp(data["old"] - data["rollout"]).clamp(max=cfg.tis_cap)
    theirs_lp = data["logps"].clone().requires_grad_(True)
    theirs, trl_metrics = trl_loss(
        cfg, theirs_lp, inputs, use_bias_correction_kl=use_bias_correction_kl, tis=tis
    )
    theirs.backward()

    ours_lp = data["logps"].clone().requires_grad_(True)
    ours, metrics = grpo_loss(
        ours_lp,
        data["adv"],
        data["mask"],
        cfg,
        old_logps=inputs.get("old_per_token_logps"),
        ref_logps=inputs.get("ref_per_token_logps"),
        rollout_logps=data["rollout"] if tis else None,
        # TRL divides each micro-batch by the accumulation steps: a step of ACCUM micro-batches of B completions;
        # its bnpo normalizes by this micro-batch's tokens, which equals r1kit's step normalizer when every
        # micro-batch has as many tokens; dapo normalizes by the tokens TRL counted over the accumulated batch
        step_sequences=ACCUM * B,
        step_tokens=ACCUM * data["mask"].sum() if cfg.loss_type == "bnpo" else data["num_items_in_batch"],
    )
    ours.backward()
    return (theirs, theirs_lp.grad, trl_metrics), (ours, ours_lp.grad, metrics)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("clip,off_policy", [((0.2, 0.2), False), ((0.2, 0.2), True), ((0.2, 0.28), True)])
def test_same_loss_and_grad_as_trl(loss_type, beta, clip, off_policy):
    cfg = GRPOLossConfig(loss_type, clip[0], clip[1], beta, max_completion_length=MAX_LEN)
    (theirs, their_grad, their_m), (ours, our_grad, our_m) = run_both(
        cfg, fixed_inputs(0), off_policy=off_policy
    )
    assert abs(ours.item() - theirs.item()) < 1e-5
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-7)
    assert our_m["clip_ratio/region"] == pytest.approx(their_m["clip_ratio/region_mean"][0], abs=1e-6)
    assert our_m["clip_ratio/low"] == pytest.approx(their_m["clip_ratio/low_mean"][0], abs=1e-6)
    assert our_m["clip_ratio/high"] == pytest.approx(their_m["clip_ratio/high_mean"][0], abs=1e-6)
    if beta:
        assert our_m["kl"] == pytest.approx(their_m["kl"][0], rel=1e-5)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_same_as_trl_with_tis_and_bias_corrected_kl(loss_type):
    cfg = GRPOLossConfig(loss_type, 0.2, 0.28, 0.04, tis_cap=1.2, unbiased_kl=True)
    (theirs, their_grad, _), (ours, our_grad, _) = run_both(
        cfg, fixed_inputs(1), off_policy=True, use_bias_correction_kl=True, tis=True
    )
    assert abs(ours.item() - theirs.item()) < 1e-5
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-7)
