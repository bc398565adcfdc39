"""GRPO: the reinforcement-learning recipe of DeepSeekMath / DeepSeek-R1, with verifiable rewards.

Per step: draw questions; sample G completions each with r1kit's engine (which shares the policy's weights,
so there is no weight sync and rollout/trainer log-probs come from one model); score them with rule-based
rewards; group advantages (r - mean) / (std + eps); optimize the clipped surrogate with the k3 KL to a frozen
reference (the reference is not even loaded when beta = 0). The math lives in `advantages.py` and `losses.py`;
this file only orchestrates.

Options: the loss (`loss:` loss_type grpo | bnpo | dr_grpo | dapo, clip-higher epsilon_high, beta, tis_cap,
unbiased_kl; see `GRPOLossConfig`), scale_rewards (group | batch | none), num_iterations (mu > 1 reuses a
rollout with stored old log-probs), masking of truncated completions, DAPO dynamic sampling (drop groups that
are all right or all wrong, draw more questions), soft overlong punishment (the `soft_overlong` reward),
truncated importance sampling against the engine's log-probs (loss.tis_cap), gradient accumulation
(micro_batch_size; the step's normalizers make it exact for any slicing), bf16 autocast and activation
checkpointing (run.dtype, run.gradient_checkpointing). MoE policies update their router bias after every
optimizer step.

Rollouts run on r1kit's engine by default, in the policy's precision; `rollout_dtype: bfloat16` samples with
bf16 matmuls on packed weights while the trainer stays fp32 (faster on CPUs with AMX; pair it with tis_cap).
With `rollout_backend: vllm` (GPU machines) they run on a colocated vLLM engine started from the policy's
weights (its precision set in `vllm: {dtype: ...}`), and the policy's weights are pushed into it after every
optimizer step (`VLLMEngine.update_weights`). Either way the trainer recomputes every log-prob it optimizes,
and tis_cap corrects for what differs between the sampling kernels and the trainer's.

Left out: a value model (GRPO has none), rollout workers on other GPUs or nodes.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from r1kit.config import configclass
from r1kit.errors import ConfigError
from r1kit.tools.python import ToolConfig, tool_stats
from r1kit.training.loop import OptimConfig, RunConfig
from r1kit.training.losses import GRPOLossConfig
from r1kit.training.tasks import TaskData


@configclass
class GRPOConfig:
    model: str = "toy-moe"
    tokenizer: str | None = None
    ref_model: str | None = None  # default: the starting model
    data: TaskData = field(default_factory=TaskData)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/grpo"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))
    # rollout
    questions_per_step: PositiveInt = 4
    num_generations: Annotated[int, Field(ge=2)] = 8  # GRPO compares completions within a group
    max_new_tokens: PositiveInt = 128
    temperature: PositiveFloat = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    rollout_backend: Literal["r1kit", "vllm"] = "r1kit"
    rollout_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: bf16 matmuls while sampling (CPU AMX)
    vllm: dict = field(default_factory=lambda: {"gpu_memory_utilization": 0.3})  # VLLMEngine options
    # rewards: name -> weight (see r1kit.rewards.REWARDS)
    rewards: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.2})
    # objective
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: PositiveInt = 1
    mask_truncated: bool = False
    # DAPO dynamic sampling: keep groups whose `dynamic_sampling_metric` varies within the group (accuracy:
    # some but not all completions correct, as DAPO and verl's filter_groups), draw more questions to refill
    dynamic_sampling: bool = False
    dynamic_sampling_metric: Literal["accuracy", "reward"] = "accuracy"
    max_resample_rounds: NonNegativeInt = 3
    micro_batch_size: PositiveInt = 16
    # the model may call a sandboxed Python interpreter while it reasons (r1kit/tools/python.py); tool output is
    # in the completion's tokens but never in the loss, the KL or the entropy
    tools: ToolConfig | None = None
    # evaluation and logging
    eval_every: NonNegativeInt = 0  # greedy held-out accuracy every N steps (and before the first step); 0 = off
    eval_size: PositiveInt = 100
    samples_per_step: NonNegativeInt = 2

    def __post_init__(self):
        from r1kit.rewards import REWARDS

        if self.tools is not None and self.rollout_backend == "vllm":
            raise ConfigError("tools: the Python tool runs in r1kit's engine only (rollout_backend: r1kit)")
        unknown = [r for r in self.rewards if r not in REWARDS]
        if unknown:
            raise ConfigError(f"rewards: unknown reward {unknown[0]!r} (known: {', '.join(sorted(REWARDS))})")
        if self.loss.max_completion_length is None:  # dr_grpo's constant L is the generation budget
            self.loss = dataclasses.replace(self.loss, max_completion_length=self.max_new_tokens)


# ---- rollout ------------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    examples: list[dict]  # one per completion (question repeated G times)
    prompt_ids: list[list[int]]
    completions: list  # r1kit.generation.Completion
    rewards: torch.Tensor  # [B*G]
    correct: torch.Tensor  # [B*G] 1.0 where the committed answer is right (the accuracy the recipe grades by)
    per_reward: dict[str, list[float | None]]
    seconds: float


def draw_questions(train: list[dict], step: int, seed: int, n: int, round_: int = 0) -> list[dict]:
    """The questions of a step: a pure function of (seed, step, round), so a resumed run draws the same.

    Stratified by task: each task gets an equal share of the step (the remainder goes to tasks drawn at
    random). With a few questions per step, a uniform draw's task mix swings from step to step and the step's
    reward swings with it, hiding the learning curve under the draw (measured on the toy pipeline: the
    per-step reward correlated +0.7 with the step's share of the easier task)."""
    rng = random.Random(f"{seed}/{step}/{round_}")
    by_task: dict[str, list[dict]] = {}
    for ex in train:
        by_task.setdefault(str(ex.get("task", "")), []).append(ex)
    tasks = sorted(by_task)
    n = min(n, len(train))
    extra = set(rng.sample(tasks, n % len(tasks)))
    drawn, rest = [], []
    for t in tasks:
        pool = rng.sample(by_task[t], len(by_task[t]))  # this task's questions in a random order
        share = n // len(tasks) + (t in extra)
        drawn += pool[:share]
        rest += pool[share:]
    drawn += rng.sample(rest, n - len(drawn))  # a task with too few questions leaves its share to the others
    rng.shuffle(drawn)
    return drawn


def rollout(engine, questions: list[dict], cfg: GRPOConfig, step: int, round_: int = 0) -> Rollout:
    from r1kit.generation import SamplingParams
    from r1kit.training.tasks import example_messages, is_correct, score_completion

    G = cfg.num_generations
    examples = [ex for ex in questions for _ in range(G)]
    encoded = [engine.encode(example_messages(ex, cfg.data)) for ex in questions]
    prompt_ids = [ids for ids, _ in encoded for _ in range(G)]
    base = (cfg.run.seed * 1_000_003 + step * 101 + round_) * 65_536
    params = [SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                             seed=base + i) for i in range(len(examples))]
    t0 = time.perf_counter()
    completions = engine.generate(prompt_ids, params)
    seconds = time.perf_counter() - t0
    # correctness: the accuracy reward, or last_number where a recipe grades prose answers
    graded_by = next((k for k in ("accuracy", "last_number") if k in cfg.rewards), None)
    totals, correct, per_reward = [], [], {name: [] for name in cfg.rewards}
    for (ids, prefilled), c, ex in zip([e for e in encoded for _ in range(G)], completions, examples):
        total, parts = score_completion(c.text, ex, cfg.rewards, prefilled_think=prefilled,
                                        completion_tokens=len(c.token_ids), max_tokens=cfg.max_new_tokens)
        totals.append(total)
        for name, value in parts.items():
            per_reward[name].append(value)
        if graded_by:
            correct.append(float((parts[graded_by] or 0.0) >= 1.0))
        else:
            correct.append(float(is_correct(c.text, ex, prefilled_think=prefilled)))
    return Rollout(examples, prompt_ids, completions, torch.tensor(totals), torch.tensor(correct), per_reward,
                   seconds)


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    def join(lists):
        return [x for lst in lists for x in lst]

    per = {k: join(p.per_reward[k] for p in parts) for k in parts[0].per_reward}
    return Rollout(join(p.examples for p in parts), join(p.prompt_ids for p in parts),
                   join(p.completions for p in parts), torch.cat([p.rewards for p in parts]),
                   torch.cat([p.correct for p in parts]), per, sum(p.seconds for p in parts))


def select_groups(r: Rollout, keep: list[int], G: int) -> Rollout:
    idx = [g * G + i for g in keep for i in range(G)]
    return Rollout([r.examples[i] for i in idx], [r.prompt_ids[i] for i in idx], [r.completions[i] for i in idx],
                   r.rewards[idx], r.correct[idx], {k: [v[i] for i in idx] for k, v in r.per_reward.items()},
                   r.seconds)


def informative_groups(r: Rollout, group_size: int, metric: str = "accuracy") -> torch.Tensor:
    """bool [groups]: True where `metric` varies within the group (accuracy: some right, some wrong)."""
    from r1kit.training.advantages import keep_informative_groups

    return keep_informative_groups(r.correct if metric == "accuracy" else r.rewards, group_size)


def collect(engine, train: list[dict], cfg: GRPOConfig, step: int) -> tuple[Rollout, float, float]:
    """One step's rollout, its frac_zero_std (groups whose rewards are all equal: no policy gradient) and the
    accuracy of the step's first draw of questions, every group counted.

    With dynamic sampling, groups whose `dynamic_sampling_metric` does not vary are dropped (by accuracy: all
    right or all wrong, even when a format or length term makes their rewards differ) and more questions are
    drawn until `questions_per_step` groups are kept or the rounds run out. The rollout's own accuracy is then
    near 0.5 by construction; the first draw's is the policy's accuracy on the step's questions."""
    from r1kit.training.advantages import keep_informative_groups

    G, Q = cfg.num_generations, cfg.questions_per_step
    first = rollout(engine, draw_questions(train, step, cfg.run.seed, Q), cfg, step)
    frac_zero_std = 1.0 - keep_informative_groups(first.rewards, G).float().mean().item()
    drawn_accuracy = first.correct.mean().item()
    if not cfg.dynamic_sampling:
        return first, frac_zero_std, drawn_accuracy
    kept, parts = [], []
    for round_ in range(cfg.max_resample_rounds + 1):
        r = first if round_ == 0 else rollout(engine, draw_questions(train, step, cfg.run.seed, Q, round_), cfg,
                                              step, round_)
        mask = informative_groups(r, G, cfg.dynamic_sampling_metric)
        groups = [g for g in range(len(mask)) if mask[g]][: Q - sum(len(k) for k in kept)]
        if groups:
            kept.append(groups)
            parts.append(r)
        if sum(len(k) for k in kept) >= Q:
            break
    if not parts:  # every group was uninformative: train on the first draw (only KL acts)
        return first, frac_zero_std, drawn_accuracy
    return concat_rollouts([select_groups(p, k, G) for p, k in zip(parts, kept)]), frac_zero_std, drawn_accuracy


# ---- the policy update -----------------------------------------------------------------------------------

def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
         model_masks: list[list[bool]] | None = None):
    """Left-pad prompts to P, right-pad completions to C: ids/attention (B, P+C), completion mask (B, C).

    model_masks: per completion token, whether the model sampled it; tool output (False) is attended to but
    out of the completion mask, so no loss, KL or entropy term sees it."""
    P, C = max(map(len, prompt_ids)), max(1, max(map(len, completion_ids)))
    B = len(prompt_ids)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros(B, P + C, dtype=torch.long)
    cmask = torch.zeros(B, C)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, P - len(p):P] = torch.tensor(p)
        ids[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
        attn[i, P - len(p):P + len(c)] = 1
        cmask[i, : len(c)] = 1 if model_masks is None else torch.tensor(model_masks[i], dtype=torch.float)
    return ids, attn, cmask, P


def completion_logps(model, ids: torch.Tensor, attn: torch.Tensor, P: int, temperature: float,
                     with_entropy: bool = False):
    """Per-token log-probs (B, C) of the completion tokens under softmax(logits / T); optional entropy (a metric,
    detached). Fused with the output projection in chunks: the (B, C, V) logits are never built."""
    from r1kit.training.logprobs import completion_logprobs

    logps, entropy = completion_logprobs(model, ids, attn, P, temperature=temperature, with_entropy=with_entropy)
    return logps, None if entropy is None else entropy.detach()


@torch.no_grad()
def frozen_logps(model, ids, attn, P, temperature, micro: int) -> torch.Tensor:
    return torch.cat([completion_logps(model, ids[s], attn[s], P, temperature)[0]
                      for s in _slices(len(ids), micro)])


def step_tensors(model, cfg: GRPOConfig, r: Rollout):
    """A rollout as the update reads it, on the model's device: ids and attention (B, P+C), the completion mask
    (B, C) (tool output and, with mask_truncated, truncated completions excluded), the engine's log-probs (B, C)
    and the prompt length P."""
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, attn, cmask, P = pack(r.prompt_ids, [c.token_ids for c in r.completions], pad,
                               [c.model_token_mask() for c in r.completions])
    if cfg.mask_truncated:
        cmask[[i for i, c in enumerate(r.completions) if c.finish_reason == "length"]] = 0
    rollout_logps = torch.zeros_like(cmask)
    for i, c in enumerate(r.completions):
        rollout_logps[i, : len(c.logprobs)] = torch.tensor(c.logprobs)
    dev = next(model.parameters()).device
    return (*(t.to(dev) for t in (ids, attn, cmask, rollout_logps)), P)


def policy_loss(model, loss_cfg, temperature: float, s: slice, ids, attn, cmask, P: int, adv, *, old, ref,
                rollout_logps, step_sequences: int, step_tokens, with_entropy: bool):
    """The clipped-surrogate loss of one micro-batch `s` (plus its share of the MoE balance loss); returns
    (loss, metrics, log-probs, entropy or None)."""
    from r1kit.training.losses import grpo_loss

    logps, entropy = completion_logps(model, ids[s], attn[s], P, temperature, with_entropy=with_entropy)
    loss, m = grpo_loss(logps, adv[s], cmask[s], loss_cfg, old_logps=None if old is None else old[s],
                        ref_logps=None if ref is None else ref[s], rollout_logps=rollout_logps[s],
                        step_sequences=step_sequences, step_tokens=step_tokens)
    aux = model.aux_loss()
    if aux is not None:  # the balance loss of this slice, weighted by its share of the step
        loss = loss + aux * (s.stop - s.start) / step_sequences
    return loss, m, logps, entropy


def _slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def policy_update(run, cfg: GRPOConfig, r: Rollout, ref_model, loss_cfg) -> dict:
    """num_iterations optimizer steps on one rollout (this rank's share of the step's groups); returns metrics
    averaged over the whole step, the same on every rank.

    Under torchrun the normalizers are the whole step's (sequences and completion tokens of all ranks) and the
    advantages are computed from every rank's rewards, so each rank's loss is its share of the global objective
    and the gradients FSDP sums over ranks are one process's gradients of the whole step."""
    from r1kit.training.advantages import group_advantages
    from r1kit.training.distributed import (
        Topology,
        all_gather_objects,
        all_reduce,
        gradient_sync,
        sync_expert_load,
    )
    from r1kit.training.loop import autocast
    from r1kit.training.optim import clip_grad_norm

    model, topo = run.model, getattr(run, "topo", None) or Topology()  # (one process when `run` carries none)
    dev = next(model.parameters()).device
    ids, attn, cmask, rollout_logps, P = step_tensors(model, cfg, r)
    all_rewards = torch.cat(all_gather_objects(r.rewards, topo))  # every rank's groups, in rank order
    all_adv = group_advantages(all_rewards, cfg.num_generations, cfg.scale_rewards)
    adv = all_adv[topo.rank * len(ids):(topo.rank + 1) * len(ids)]  # this rank's rows (equal shares)
    adv = adv.to(dev)
    n = len(all_rewards)  # sequences of the whole step
    slices = _slices(len(ids), cfg.micro_batch_size)
    with autocast(cfg.run, dev):
        ref = frozen_logps(ref_model, ids, attn, P, cfg.temperature, cfg.micro_batch_size) if ref_model else None
        old = (frozen_logps(model, ids, attn, P, cfg.temperature, cfg.micro_batch_size)
               if cfg.num_iterations > 1 else None)
    # the step's normalizers: the objective depends neither on how the step is sliced nor on the process count
    tokens = torch.tensor(all_reduce([cmask.sum().item()], topo)[0], device=dev)
    sums: dict[str, float] = {"adv_std": all_adv.std().item() if n > 1 else 0.0,
                              "adv_abs_mean": all_adv.abs().mean().item()}
    diff_max, entropy_sum = 0.0, 0.0
    for it in range(cfg.num_iterations):
        for j, s in enumerate(slices):
            with gradient_sync(model, j == len(slices) - 1), autocast(cfg.run, dev):
                loss, m, logps, entropy = policy_loss(model, loss_cfg, cfg.temperature, s, ids, attn, cmask, P, adv,
                                                      old=old, ref=ref, rollout_logps=rollout_logps,
                                                      step_sequences=n, step_tokens=tokens, with_entropy=it == 0)
                loss.backward()
            for k, v in m.items():  # micro-batch metrics, weighted by the slice's share of the step
                sums[k] = sums.get(k, 0.0) + v * (s.stop - s.start) / (n * cfg.num_iterations)
            if it == 0:
                valid = cmask[s].bool()
                if valid.any():
                    diff_max = max(diff_max, (logps.detach() - rollout_logps[s])[valid].abs().max().item())
                    entropy_sum += entropy[valid].sum().item()
        sums["grad_norm"] = clip_grad_norm(model.parameters(), cfg.optim.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        sync_expert_load(model, topo)
        load = model.update_router_biases(apply=bool(cfg.run.router_bias_update))
        if load is not None:
            sums["expert_load_max"] = (load.max(dim=1).values * load.shape[1]).mean().item()  # 1.0 = balanced
    shared = [k for k in sorted(sums) if k not in ("adv_std", "adv_abs_mean", "grad_norm", "expert_load_max")]
    sums.update(zip(shared, all_reduce([sums[k] for k in shared], topo)))  # the ranks' shares of the step
    sums["logprob_diff_max"] = all_reduce([diff_max], topo, "max")[0]
    sums["entropy"] = all_reduce([entropy_sum], topo)[0] / max(tokens.item(), 1)
    return sums


# ---- the recipe ----------------------------------------------------------------------------------------------

def train(cfg: GRPOConfig) -> dict:
    """The GRPO recipe. Under torchrun each rank samples its equal share of the step's questions (whole groups)
    on the gathered weights of the sharded policy, with the seeds one process would use; rewards and metrics
    are reduced over ranks and rank 0 writes them. The reference model is sharded like the policy."""
    from r1kit.generation import Engine
    from r1kit.models.checkpoint import load_model
    from r1kit.training.advantages import keep_informative_groups
    from r1kit.training.distributed import RankEngine, all_gather_objects, rank_share, shard_model
    from r1kit.training.evaluator import greedy_accuracy
    from r1kit.training.loop import finish_run, metrics_logger, save_step, start_run
    from r1kit.training.tasks import load_examples

    train_set = load_examples(cfg.data, "train", cfg.run.seed)
    eval_set = load_examples(cfg.data, "test", cfg.run.seed)[: cfg.eval_size] if cfg.eval_every else []
    run = start_run(cfg, cfg.run, cfg.optim, cfg.model, cfg.tokenizer)
    topo = run.topo
    if topo.distributed and (cfg.dynamic_sampling or cfg.rollout_backend == "vllm"):
        raise ConfigError("under torchrun, dynamic_sampling and rollout_backend: vllm are not supported yet")
    share = len(rank_share(range(cfg.questions_per_step), topo, "questions_per_step"))  # questions per rank
    ref_model = None
    if cfg.loss.beta > 0:  # frozen reference, only when the KL term is on
        ref_model = load_model(cfg.ref_model, seed=cfg.run.seed) if cfg.ref_model else \
            load_model(cfg.model, seed=cfg.run.seed)
        ref_model.eval().requires_grad_(False).to(run.device)
        if topo.distributed:
            shard_model(ref_model, topo, param_dtype=run.amp_dtype if run.device.type == "cuda" else None)
    batch = share * cfg.num_generations
    prompt_room = max(len(run.tokenizer(ex["question"]).input_ids) for ex in train_set[:200]) + 96
    max_seq_len = min(run.model.config.max_seq_len, prompt_room + cfg.max_new_tokens + 1)
    if cfg.rollout_backend == "vllm":
        engine = vllm_rollout_engine(run, cfg, max_seq_len)
    else:
        def make_engine(model):
            return Engine(model, run.tokenizer, max_batch_size=batch, max_seq_len=max_seq_len,
                          matmul_dtype=torch.bfloat16 if cfg.rollout_dtype == "bfloat16" else None, tools=cfg.tools)

        # under torchrun: an unsharded copy refreshed after every step, seeded as in one process
        engine = RankEngine(make_engine, run.model, topo, topo.rank * batch) if topo.distributed else \
            make_engine(run.model)
    loss_cfg = cfg.loss
    last: dict = {}
    with metrics_logger(run, cfg.run.steps, ("reward", "accuracy", "completion_len"), cfg.run.progress,
                        "grpo", cfg.run.report_to) as log:
        if cfg.eval_every and run.start_step == 0:
            log.log(0, {"eval_accuracy": greedy_accuracy(engine, eval_set, cfg.data, cfg.max_new_tokens)})
        for step in range(run.start_step + 1, cfg.run.steps + 1):
            t0 = time.perf_counter()
            if topo.distributed:  # this rank's share of the step's questions (whole groups)
                r, frac_zero_std, drawn = rollout(engine, rank_share(draw_questions(
                    train_set, step, cfg.run.seed, cfg.questions_per_step), topo), cfg, step), None, None
            else:
                r, frac_zero_std, drawn = collect(engine, train_set, cfg, step)
            metrics = policy_update(run, cfg, r, ref_model, loss_cfg)
            if cfg.rollout_backend == "vllm":
                engine.update_weights(run.model)
            elif topo.distributed:
                engine.refresh()
            ranks = all_gather_objects((r.rewards, r.correct, r.per_reward, r.seconds,
                                        [(len(c.token_ids), c.finish_reason) for c in r.completions],
                                        [c.tool_calls for c in r.completions]), topo)
            rewards, correct = torch.cat([x[0] for x in ranks]), torch.cat([x[1] for x in ranks])
            per_reward = {k: [v for x in ranks for v in x[2][k]] for k in r.per_reward}
            done = [c for x in ranks for c in x[4]]
            lengths = torch.tensor([n for n, _ in done], dtype=torch.float)
            if frac_zero_std is None:
                frac_zero_std = 1.0 - keep_informative_groups(rewards, cfg.num_generations).float().mean().item()
            record = {
                **rollout_metrics(rewards, correct, per_reward, lengths, [reason for _, reason in done],
                                  max(x[3] for x in ranks)),
                "frac_zero_std": frac_zero_std, **metrics, "lr": run.scheduler.get_last_lr()[0],
                **(tool_stats([c for x in ranks for c in x[5]], correct.tolist()) if cfg.tools else {}),
                **({"accuracy_drawn": drawn} if cfg.dynamic_sampling and drawn is not None else {}),
                "step_s": time.perf_counter() - t0,
            }
            if cfg.eval_every and step % cfg.eval_every == 0:
                record["eval_accuracy"] = greedy_accuracy(engine, eval_set, cfg.data, cfg.max_new_tokens)
            last = log.log(step, record)
            log.log_samples(step, sample_records(r, cfg.samples_per_step))
            if step % cfg.run.save_every == 0 or step == cfg.run.steps:
                save_step(run, step, cfg.run)
    finish_run(run, ["reward", "accuracy", "eval_accuracy", "completion_len", "kl", "entropy", "frac_zero_std",
                     "expert_load_max"])
    return last


def vllm_rollout_engine(run, cfg: GRPOConfig, max_seq_len: int):
    """A colocated VLLMEngine started from the policy's current weights (fresh or resumed), saved once to disk."""
    from r1kit.generation import VLLMEngine
    from r1kit.models.checkpoint import save_model

    path = save_model(run.model, run.dir / "vllm-init", tokenizer=run.tokenizer)
    options = {"max_model_len": max_seq_len, "seed": cfg.run.seed, **cfg.vllm}
    return VLLMEngine(path, run.tokenizer, **options)


def rollout_metrics(rewards: torch.Tensor, correct: torch.Tensor, per_reward: dict[str, list], lengths: torch.Tensor,
                    finish_reasons: list[str], seconds: float) -> dict[str, float | None]:
    """What a step's rollout logs (GRPO and PPO): rewards, accuracy, lengths, truncation, sampling speed."""
    return {
        "reward": rewards.mean().item(), "reward_std": rewards.std().item(),
        **{f"reward/{k}": _mean(v) for k, v in per_reward.items()},
        "accuracy": correct.mean().item(),
        "completion_len": lengths.mean().item(), "completion_len_max": lengths.max().item(),
        "truncated": sum(reason == "length" for reason in finish_reasons) / len(finish_reasons),
        "rollout_tok_s": lengths.sum().item() / max(seconds, 1e-9),
    }


def sample_records(r: Rollout, n: int) -> list[dict]:
    """The first n completions of a rollout, for samples.jsonl."""
    return [{"question": ex["question"], "gold": ex.get("answer"), "completion": c.text, "reward": rw}
            for ex, c, rw in list(zip(r.examples, r.completions, r.rewards.tolist()))[:n]]


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


__all__ = ["GRPOConfig", "completion_logps", "pack", "policy_update", "rollout", "train"]
