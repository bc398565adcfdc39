"""The causal-LM training loop shared by pretraining, SFT and distillation.

A step draws `batch_size * grad_accum` rows (a pure function of (seed, step), so a resumed run sees the same
data), runs `lm_loss` on each micro-batch with the token counts of the whole step as normalizers, clips, steps
AdamW and the schedule, then updates (or only logs) the MoE router biases (auxiliary-loss-free balancing).

Left out: data parallelism across processes.
"""

from __future__ import annotations

import time

from pydantic import PositiveInt

from r1kit.config import configclass
from r1kit.errors import R1kitError
from r1kit.training.evaluator import Evaluator
from r1kit.training.lm_loss import NO_KD, KDConfig, lm_loss, mtp_depths, target_counts
from r1kit.training.loop import OptimConfig, RunConfig
from r1kit.training.packing import Sample


@configclass
class BatchConfig:
    seq_len: PositiveInt = 512  # tokens per row (samples are truncated to it)
    batch_size: PositiveInt = 8  # rows per micro-batch
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step
    packing: bool = True  # several samples per row (block-diagonal attention) or one per row
    mtp: bool = True  # add the MTP loss when the model has MTP layers


def fit(run, samples: list[Sample], batch_cfg: BatchConfig, run_cfg: RunConfig, optim: OptimConfig, *, desc: str,
        teacher=None, kd: KDConfig = NO_KD, evaluate: Evaluator | None = None, bias_update: bool = False) -> dict:
    """Train `run.model` on `samples` from `run.start_step` to `run_cfg.steps`; returns the last metrics.

    evaluate: held-out greedy accuracy, logged as eval_accuracy before the first step and every
    `evaluate.every` steps. teacher/kd: logit distillation (see `lm_loss`). bias_update: apply the MoE
    router-bias update after each step (otherwise the expert load is only logged).
    """
    from r1kit.training.loop import autocast, finish_run, save_step
    from r1kit.training.metrics import MetricsLogger
    from r1kit.training.optim import clip_grad_norm
    from r1kit.training.packing import collate, make_rows, step_rows, truncate

    model = run.model
    kept = truncate(samples, batch_cfg.seq_len)
    if not kept:
        raise R1kitError("no training sample has a target token within seq_len")
    rows = make_rows(kept, batch_cfg.seq_len, batch_cfg.packing, run_cfg.seed)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    depths = mtp_depths(model, batch_cfg.mtp)
    B = batch_cfg.batch_size
    last: dict = {}
    with MetricsLogger(run.dir, total_steps=run_cfg.steps, start_step=run.start_step, show=("loss", "eval_accuracy"),
                       progress=run_cfg.progress, desc=desc) as log:
        if evaluate is not None and run.start_step == 0:
            log.log(0, {"eval_accuracy": evaluate(model)})
        for step in range(run.start_step + 1, run_cfg.steps + 1):
            t0 = time.perf_counter()
            chosen = step_rows(rows, step, B * batch_cfg.grad_accum, run_cfg.seed)
            micro = [collate(chosen[i:i + B], pad, batch_cfg.packing) for i in range(0, len(chosen), B)]
            norms = target_counts(micro, depths)
            sums: dict[str, float] = {}
            for batch in micro:
                with autocast(run_cfg):
                    loss, parts = lm_loss(model, batch, norms, depths=depths, teacher=teacher, kd=kd)
                loss.backward()
                for k, v in parts.items():  # ce/mtp/kd are shares of the step mean; aux is per micro-batch
                    sums[k] = sums.get(k, 0.0) + (v / len(micro) if k == "aux" else v)
            grad_norm = clip_grad_norm(model.parameters(), optim.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            record = {"loss": sums["ce"], **{k: v for k, v in sums.items() if k != "ce"}, "grad_norm": grad_norm,
                      "lr": run.scheduler.get_last_lr()[0], "tokens": norms[0]}
            load = (model.update_router_biases(apply=bias_update) if hasattr(model, "update_router_biases") else None)
            if load is not None:
                record["expert_load_max"] = (load.max(dim=1).values * load.shape[1]).mean().item()  # 1 = balanced
            record["step_s"] = time.perf_counter() - t0
            record["tok_s"] = sum(b.input_ids.numel() for b in micro) / record["step_s"]
            if evaluate is not None and evaluate.every and step % evaluate.every == 0:
                record["eval_accuracy"] = evaluate(model)
            last = log.log(step, record)
            if step % run_cfg.save_every == 0 or step == run_cfg.steps:
                save_step(run, step, run_cfg)
    finish_run(run, ["loss", "mtp", "kd", "eval_accuracy", "grad_norm", "lr", "expert_load_max"])
    return last
