"""PPO: the baseline GRPO replaced -- the same rollouts, rewards and clipped surrogate, plus a critic.

Per step: draw questions and sample G completions each with r1kit's engine (`grpo.collect`, so rollouts,
rewards, dynamic sampling and seeds are GRPO's); score the states with a critic (`value.ValueModel`: a
transformer with a scalar head, its own AdamW); put each completion's reward on its last token, optionally
minus `kl_coef * (log pi_old - log pi_ref)` on every token (InstructGPT's KL penalty in the reward); GAE
(gamma, lam) gives per-token advantages and returns (`advantages.gae`), whitened over the batch's tokens;
the policy loss is `grpo_loss` with those per-token advantages (clip range, loss aggregation, the optional
KL term and TIS all come from `loss:`), the critic loss is the clipped value loss (`value.value_loss`,
vf_clip). Both models step after every pass over the rollout (num_iterations passes: PPO's epochs).

The math lives in `advantages.py`, `losses.py` and `value.py`; this file only orchestrates. The policy is
checkpointed by the shared `loop.save_step`; the critic (weights as safetensors, its optimizer and schedule)
by `checkpointing.save_checkpoint` into `<run>/critic/checkpoints/step-N`, saved before the policy's
checkpoint of the same step and kept one deeper, so a resume always finds the critic of the policy's step.

Left out: a critic sharing the policy's backbone, value bootstrapping of truncated completions (they end
like finished ones), adaptive KL control, rollout-time values from the engine (the critic scores the packed
batch after sampling), distributed (torchrun) training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from r1kit.config import configclass
from r1kit.errors import CheckpointError, ConfigError
from r1kit.training.grpo import GRPOConfig, Rollout
from r1kit.training.loop import OptimConfig, RunConfig

Unit = Annotated[float, Field(ge=0, le=1)]


@configclass
class PPOConfig(GRPOConfig):
    """GRPOConfig's rollout, reward, loss and run fields, plus the critic. scale_rewards is GRPO's only."""

    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/ppo"))
    num_generations: PositiveInt = 8  # the critic, not the group, is the baseline: 1 is allowed
    # critic
    value_model: str | None = None  # None: initialized from the policy's source (`model`)
    value_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))
    vf_clip: PositiveFloat | None = 0.2  # value clipping range; None = plain squared error
    # advantages
    gamma: Unit = 1.0
    lam: Unit = 0.95
    whiten_advantages: bool = True
    kl_coef: NonNegativeFloat = 0.0  # per-token penalty -kl_coef * (log pi_old - log pi_ref) in the reward

    def __post_init__(self):
        super().__post_init__()
        if self.tools is not None:
            raise ConfigError("tools: PPO runs without the Python tool for now (GRPO trains with it)")
        if self.scale_rewards != "group":
            raise ConfigError("scale_rewards: GRPO's group scaling has no meaning in PPO (use whiten_advantages)")


# ---- the critic ------------------------------------------------------------------------------------------

@dataclass
class Critic:
    model: torch.nn.Module  # r1kit.training.value.ValueModel
    optimizer: torch.optim.Optimizer
    scheduler: object
    dir: Path  # <run>/critic: its checkpoints live under dir/checkpoints


def start_critic(cfg: PPOConfig, run) -> Critic:
    """The critic, its optimizer and schedule; restored from the checkpoint of the policy's resumed step."""
    from r1kit.training.checkpointing import checkpoint_name, load_checkpoint
    from r1kit.training.loop import enable_activation_checkpointing
    from r1kit.training.optim import build_optimizer, build_scheduler
    from r1kit.training.value import ValueModel

    device = next(run.model.parameters()).device
    model = ValueModel.from_source(cfg.value_model or cfg.model, device=device, seed=cfg.run.seed).train()
    if cfg.run.gradient_checkpointing:
        enable_activation_checkpointing(model.backbone)
    o = cfg.value_optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay)
    scheduler = build_scheduler(optimizer, o.warmup_steps, cfg.run.steps, o.schedule, o.min_lr_ratio)
    critic = Critic(model, optimizer, scheduler, run.dir / "critic")
    if run.start_step > 0:
        path = critic.dir / "checkpoints" / checkpoint_name(run.start_step)
        if not path.is_dir():
            raise CheckpointError(f"the policy resumes from step {run.start_step} but {path} does not exist")
        load_checkpoint(path, load_model_fn=lambda d: _load_weights(model, d), optimizer=optimizer,
                        scheduler=scheduler, restore_rng=False)  # the policy's checkpoint restored the RNGs
    return critic


def save_critic(critic: Critic, step: int, run: RunConfig) -> None:
    """Atomic critic checkpoint of `step`; one more is kept than the policy keeps (see the module docstring)."""
    from safetensors.torch import save_model

    from r1kit.training.checkpointing import save_checkpoint

    save_checkpoint(critic.dir, step, save_model_fn=lambda d: save_model(critic.model, str(d / "critic.safetensors")),
                    optimizer=critic.optimizer, scheduler=critic.scheduler, keep_last=run.keep_last + 1)


def _load_weights(model: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(directory / "critic.safetensors"), device=str(next(model.parameters()).device))


# ---- the update ------------------------------------------------------------------------------------------

def ppo_update(run, critic: Critic, cfg: PPOConfig, r: Rollout, ref_model) -> dict:
    """num_iterations passes over one rollout, each one optimizer step of the policy and of the critic."""
    from r1kit.training.advantages import gae, masked_whiten, terminal_rewards
    from r1kit.training.grpo import _slices, frozen_logps, policy_loss, step_tensors
    from r1kit.training.loop import autocast
    from r1kit.training.optim import clip_grad_norm
    from r1kit.training.value import value_loss

    model, values_of = run.model, critic.model
    ids, attn, cmask, rollout_logps, P = step_tensors(model, cfg, r)  # (B, P+C) x2, (B, C) x2
    device = ids.device
    scores = r.rewards.to(device)
    micro, slices = cfg.micro_batch_size, _slices(len(ids), cfg.micro_batch_size)
    with autocast(cfg.run, device), torch.no_grad():
        ref = frozen_logps(ref_model, ids, attn, P, cfg.temperature, micro) if ref_model else None
        old = (frozen_logps(model, ids, attn, P, cfg.temperature, micro)
               if cfg.num_iterations > 1 or cfg.kl_coef > 0 else None)
        old_values = torch.cat([values_of(ids[s], attention_mask=attn[s])[:, P - 1:-1] for s in slices])  # (B, C)
    rewards = terminal_rewards(scores, cmask)  # (B, C)
    if cfg.kl_coef > 0:
        rewards = rewards - cfg.kl_coef * (old - ref) * cmask
    adv, returns = gae(rewards, old_values, cmask, cfg.gamma, cfg.lam)  # (B, C) each
    if cfg.whiten_advantages and cmask.sum() > 1:
        adv = masked_whiten(adv, cmask)
    tokens = cmask.sum()  # the step's normalizer, for the policy loss and the critic's
    valid = cmask.bool()
    sums: dict[str, float] = {"adv_std": adv[valid].std().item() if tokens > 1 else 0.0,
                              "adv_abs_mean": adv[valid].abs().mean().item() if tokens > 0 else 0.0}
    diff_max, entropy_sum = 0.0, 0.0
    for it in range(cfg.num_iterations):
        for s in slices:
            share = (s.stop - s.start) / (len(ids) * cfg.num_iterations)  # the slice's weight in the averages
            with autocast(cfg.run, device):
                loss, m, logps, entropy = policy_loss(model, cfg.loss, cfg.temperature, s, ids, attn, cmask, P, adv,
                                                      old=old, ref=ref, rollout_logps=rollout_logps,
                                                      step_sequences=len(ids), step_tokens=tokens,
                                                      with_entropy=it == 0)
            loss.backward()  # before the critic's forward: the two models' activations never coexist
            with autocast(cfg.run, device):
                values = values_of(ids[s], attention_mask=attn[s])[:, P - 1:-1]  # (b, C)
                vloss, vm = value_loss(values, old_values[s], returns[s], cmask[s], cfg.vf_clip)
                vloss = vloss * cmask[s].sum() / tokens.clamp(min=1.0)  # a token mean over the whole step
                vaux = values_of.backbone.aux_loss()
                if vaux is not None:
                    vloss = vloss + vaux * (s.stop - s.start) / len(ids)
            vloss.backward()
            for k, v in {**m, **vm}.items():
                sums[k] = sums.get(k, 0.0) + v * share
            if it == 0 and valid[s].any():
                diff_max = max(diff_max, (logps.detach() - rollout_logps[s])[valid[s]].abs().max().item())
                entropy_sum += entropy[valid[s]].sum().item()
        sums["grad_norm"] = clip_grad_norm(model.parameters(), cfg.optim.max_grad_norm)
        sums["value_grad_norm"] = clip_grad_norm(values_of.parameters(), cfg.value_optim.max_grad_norm)
        for opt, sched in ((run.optimizer, run.scheduler), (critic.optimizer, critic.scheduler)):
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        load = model.update_router_biases(apply=bool(cfg.run.router_bias_update))
        values_of.backbone.update_router_biases(apply=bool(cfg.run.router_bias_update))
        if load is not None:
            sums["expert_load_max"] = (load.max(dim=1).values * load.shape[1]).mean().item()  # 1.0 = balanced
    sums["logprob_diff_max"] = diff_max
    sums["entropy"] = entropy_sum / max(tokens.item(), 1)
    return sums


# ---- the recipe ----------------------------------------------------------------------------------------------

def train(cfg: PPOConfig) -> dict:
    from r1kit.generation import Engine
    from r1kit.models.checkpoint import load_model
    from r1kit.training.evaluator import greedy_accuracy
    from r1kit.training.grpo import collect, rollout_metrics, sample_records, vllm_rollout_engine
    from r1kit.training.loop import finish_run, save_step, start_run
    from r1kit.training.metrics import MetricsLogger
    from r1kit.training.tasks import load_examples

    train_set = load_examples(cfg.data, "train", cfg.run.seed)
    eval_set = load_examples(cfg.data, "test", cfg.run.seed)[: cfg.eval_size] if cfg.eval_every else []
    run = start_run(cfg, cfg.run, cfg.optim, cfg.model, cfg.tokenizer)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise ConfigError("ppo runs on one process for now: start it without torchrun")
    critic = start_critic(cfg, run)
    ref_model = None
    if cfg.loss.beta > 0 or cfg.kl_coef > 0:  # frozen reference, only when a KL term is on
        ref_model = load_model(cfg.ref_model or cfg.model, seed=cfg.run.seed).eval().requires_grad_(False)
    prompt_room = max(len(run.tokenizer(ex["question"]).input_ids) for ex in train_set[:200]) + 96
    max_seq_len = min(run.model.config.max_seq_len, prompt_room + cfg.max_new_tokens + 1)
    if cfg.rollout_backend == "vllm":
        engine = vllm_rollout_engine(run, cfg, max_seq_len)
    else:
        engine = Engine(run.model, run.tokenizer, max_batch_size=cfg.questions_per_step * cfg.num_generations,
                        max_seq_len=max_seq_len,
                        matmul_dtype=torch.bfloat16 if cfg.rollout_dtype == "bfloat16" else None)
    last: dict = {}
    with MetricsLogger(run.dir, total_steps=cfg.run.steps, start_step=run.start_step,
                       show=("reward", "accuracy", "value_loss"), progress=cfg.run.progress, desc="ppo") as log:
        if cfg.eval_every and run.start_step == 0:
            log.log(0, {"eval_accuracy": greedy_accuracy(engine, eval_set, cfg.data, cfg.max_new_tokens)})
        for step in range(run.start_step + 1, cfg.run.steps + 1):
            t0 = time.perf_counter()
            r, frac_zero_std, _ = collect(engine, train_set, cfg, step)
            metrics = ppo_update(run, critic, cfg, r, ref_model)
            if cfg.rollout_backend == "vllm":
                engine.update_weights(run.model)
            lengths = torch.tensor([len(c.token_ids) for c in r.completions], dtype=torch.float)
            record = {
                **rollout_metrics(r.rewards, r.correct, r.per_reward, lengths,
                                  [c.finish_reason for c in r.completions], r.seconds),
                "frac_zero_std": frac_zero_std, **metrics,
                "lr": run.scheduler.get_last_lr()[0], "value_lr": critic.scheduler.get_last_lr()[0],
                "step_s": time.perf_counter() - t0,
            }
            if cfg.eval_every and step % cfg.eval_every == 0:
                record["eval_accuracy"] = greedy_accuracy(engine, eval_set, cfg.data, cfg.max_new_tokens)
            last = log.log(step, record)
            log.log_samples(step, sample_records(r, cfg.samples_per_step))
            if step % cfg.run.save_every == 0 or step == cfg.run.steps:
                save_critic(critic, step, cfg.run)  # first: a policy checkpoint always has its critic
                save_step(run, step, cfg.run)
    finish_run(run, ["reward", "accuracy", "eval_accuracy", "value_loss", "explained_variance", "entropy",
                     "value_clip_fraction", "kl"])
    return last


__all__ = ["PPOConfig", "ppo_update", "save_critic", "start_critic", "train"]
