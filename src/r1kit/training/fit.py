"""The causal-LM training loop shared by pretraining, SFT and distillation.

A step draws `batch.batch_size` rows, the **global** batch (a pure function of (seed, step), so a resumed run
sees the same data); under torchrun each rank takes its contiguous equal share and runs it in micro-batches
of `micro_batch_size` rows. `lm_loss` takes the token counts of the whole step over all ranks as normalizers,
so a rank's loss is its share of the step's mean and the gradients summed over ranks (FSDP2, see
distributed.py) equal one process's gradient of the whole batch: 1 and N processes train the same way. Then
clip (over all shards), AdamW, the schedule, and the MoE router-bias update (or only its logging) from the
expert loads summed over ranks.

Left out: sequence/context parallelism (a row never spans ranks).
"""

from __future__ import annotations

import dataclasses
import time

from pydantic import PositiveInt

from r1kit.config import configclass
from r1kit.errors import R1kitError
from r1kit.training.evaluator import Evaluator
from r1kit.training.lm_loss import NO_KD, KDConfig, lm_loss, mtp_depths, target_counts
from r1kit.training.loop import OptimConfig, RunConfig
from r1kit.training.packing import Batch, Sample


@configclass
class BatchConfig:
    seq_len: PositiveInt = 512  # tokens per row (samples are truncated to it)
    batch_size: PositiveInt = 8  # rows per optimizer step over all processes (the global batch)
    micro_batch_size: PositiveInt | None = None  # rows per forward/backward on one process; None: its whole share
    # deprecated (batch_size used to be per micro-batch): rows per step = batch_size * grad_accum
    grad_accum: PositiveInt | None = None
    packing: bool = True  # several samples per row (block-diagonal attention) or one per row
    mtp: bool = True  # add the MTP loss when the model has MTP layers

    def __post_init__(self):
        if self.grad_accum is not None:  # the old meaning, resolved into the new fields
            self.micro_batch_size = self.micro_batch_size or self.batch_size
            self.batch_size, self.grad_accum = self.batch_size * self.grad_accum, None


def to_device(batch: Batch, device) -> Batch:
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device, non_blocking=True)
                                         for f in dataclasses.fields(batch) if getattr(batch, f.name) is not None})


def evaluate_on_rank0(evaluate: Evaluator, model, topo) -> float | None:
    """Held-out accuracy of the current weights, measured by rank 0 on an unsharded copy (None elsewhere)."""
    from r1kit.training.distributed import plain_copy

    copy = plain_copy(model, topo)  # collective when sharded; rank 0's CPU
    return evaluate(copy.to(next(model.parameters()).device)) if copy is not None else None


def fit(run, samples: list[Sample], batch_cfg: BatchConfig, run_cfg: RunConfig, optim: OptimConfig, *, desc: str,
        teacher=None, kd: KDConfig = NO_KD, evaluate: Evaluator | None = None, bias_update: bool = False) -> dict:
    """Train `run.model` on `samples` from `run.start_step` to `run_cfg.steps`; returns the last metrics.

    evaluate: held-out greedy accuracy, logged as eval_accuracy before the first step and every
    `evaluate.every` steps. teacher/kd: logit distillation (see `lm_loss`). bias_update: apply the MoE
    router-bias update after each step (otherwise the expert load is only logged).
    """
    from r1kit.training.distributed import (
        all_reduce_sum,
        gradient_sync,
        rank_share,
        sync_expert_load,
    )
    from r1kit.training.loop import finish_run, metrics_logger, save_step
    from r1kit.training.optim import clip_grad_norm
    from r1kit.training.packing import collate, make_rows, step_rows, truncate

    model, topo = run.model, run.topo
    kept = truncate(samples, batch_cfg.seq_len)
    if not kept:
        raise R1kitError("no training sample has a target token within seq_len")
    rows = make_rows(kept, batch_cfg.seq_len, batch_cfg.packing, run_cfg.seed)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    depths = mtp_depths(model, batch_cfg.mtp)
    rank_rows = len(rank_share(range(batch_cfg.batch_size), topo))  # checks the split before any work
    B = batch_cfg.micro_batch_size or rank_rows
    if teacher is not None:
        teacher.to(run.device)
    last: dict = {}
    with metrics_logger(run, run_cfg.steps, ("loss", "eval_accuracy"), run_cfg.progress, desc,
                        run_cfg.report_to) as log:
        if evaluate is not None and run.start_step == 0:
            log.log(0, {"eval_accuracy": evaluate_on_rank0(evaluate, model, topo)})
        for step in range(run.start_step + 1, run_cfg.steps + 1):
            t0 = time.perf_counter()
            mine = rank_share(step_rows(rows, step, batch_cfg.batch_size, run_cfg.seed), topo)
            micro = [to_device(collate(mine[i:i + B], pad, batch_cfg.packing), run.device)
                     for i in range(0, len(mine), B)]
            norms = all_reduce_sum(target_counts(micro, depths), topo)  # targets of the whole step, all ranks
            sums: dict[str, float] = {}
            for i, batch in enumerate(micro):
                with gradient_sync(model, i == len(micro) - 1), run.autocast():
                    loss, parts = lm_loss(model, batch, norms, depths=depths, teacher=teacher, kd=kd)
                    loss.backward()
                for k, v in parts.items():  # ce/mtp/kd are shares of the step mean; aux is per micro-batch
                    sums[k] = sums.get(k, 0.0) + (v / (len(micro) * topo.world_size) if k == "aux" else v)
            grad_norm = clip_grad_norm(model.parameters(), optim.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            keys = sorted(sums)
            sums = dict(zip(keys, all_reduce_sum([sums[k] for k in keys], topo)))
            n_tokens = all_reduce_sum([sum(b.input_ids.numel() for b in micro)], topo)[0]
            record = {"loss": sums["ce"], **{k: v for k, v in sums.items() if k != "ce"}, "grad_norm": grad_norm,
                      "lr": run.scheduler.get_last_lr()[0], "tokens": norms[0]}
            if hasattr(model, "update_router_biases"):
                sync_expert_load(model, topo)
                load = model.update_router_biases(apply=bias_update)
                if load is not None:
                    record["expert_load_max"] = (load.max(dim=1).values * load.shape[1]).mean().item()  # 1: balanced
            record["step_s"] = time.perf_counter() - t0
            record["tok_s"] = n_tokens / record["step_s"]
            if evaluate is not None and evaluate.every and step % evaluate.every == 0:
                record["eval_accuracy"] = evaluate_on_rank0(evaluate, model, topo)
            last = log.log(step, record)
            if step % run_cfg.save_every == 0 or step == run_cfg.steps:
                save_step(run, step, run_cfg)
    finish_run(run, ["loss", "mtp", "kd", "eval_accuracy", "grad_norm", "lr", "expert_load_max"])
    return last
