"""Causal-LM pretraining and supervised fine-tuning (cold start, rejection-sampled sets): one loop for both.

    r1kit pretrain --config pretrain.yaml      raw text (the synthetic corpus, or a .txt / JSONL `text` file)
    r1kit sft --config sft.yaml                chat rows; loss on the final assistant turn only

A step draws `batch_size * grad_accum` rows (pure function of (seed, step), so a resumed run sees the same data),
runs `lm_loss` on each micro-batch with token counts of the whole step as normalizers (micro-batches are
weighted by tokens, exactly as one big batch would be), clips, steps AdamW and the schedule, then updates the
MoE router biases (auxiliary-loss-free balancing). The objective of a micro-batch is

    loss = CE + w_mtp * mean_k CE_k  [+ sequence balance loss of MoE layers]  [+ w_kd * KL(teacher || student)]

CE_k is multi-token prediction depth k (position i predicts token i+k+1), weighted by the model's
`mtp_loss_weight`. Targets that cross a packed sample boundary are masked at every depth.

Cold start: without a dataset file, SFT trains on the synthetic tasks' worked solutions rendered R1-style
(reasoning = the solution, answer = "Answer: {answer}", which `r1kit.rewards.extract_answer` reads).

Left out: document splitting across rows (long samples are truncated), multi-turn targets (only the last
assistant turn is trained), data parallelism, loss on earlier MTP-depth hidden states from a pre-norm stream
(the MTP modules take the final-normed hidden states, as vLLM's DeepSeek MTP does).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.errors import ConfigError, R1kitError
from r1kit.training.loop import OptimConfig, RunConfig
from r1kit.training.packing import Batch, Sample
from r1kit.training.tasks import TaskData

ANSWER_FORMAT = "Answer: {answer}"  # the answer line of cold-start targets; read by extract_answer


@dataclass
class BatchConfig:
    seq_len: int = 512  # tokens per row (samples are truncated to it)
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    packing: bool = True  # several samples per row (block-diagonal attention) or one per row
    mtp: bool = True  # add the MTP loss when the model has MTP layers

    def __post_init__(self):
        for name in ("seq_len", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batch.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class CorpusData:
    file: str | None = None  # .txt (documents separated by blank lines) or a record file with a text field
    text_field: str = "text"
    num_docs: int = 20000  # synthetic corpus size when no file is given
    tasks: list[str] | None = None  # synthetic corpus tasks (None: all)
    levels: list[int] = field(default_factory=lambda: [1, 2])
    # share of synthetic documents rendered as chat turns with worked <think> reasoning through the tokenizer's
    # template, so a base model has seen the response format (as DeepSeek-V3-Base had seen reasoning text)
    chat_fraction: float = 0.0

    def __post_init__(self):
        if not 0 <= self.chat_fraction <= 1:
            raise ConfigError(f"data.chat_fraction must be in [0, 1], got {self.chat_fraction}")


@dataclass
class ChatData:
    dataset: str | None = None  # chat dataset (JSONL/Parquet/CSV/hf:id); None: cold start from `tasks`
    on_error: str = "fail"  # fail | skip rows that lack a usable assistant turn

    def __post_init__(self):
        if self.on_error not in ("fail", "skip"):
            raise ConfigError(f"data.on_error must be fail or skip, got {self.on_error!r}")


@dataclass
class PretrainConfig:
    model: str = "toy-moe"
    tokenizer: str | None = None
    data: CorpusData = field(default_factory=CorpusData)
    batch: BatchConfig = field(default_factory=lambda: BatchConfig(seq_len=256))
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/pretrain"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, schedule="cosine"))


@dataclass
class SFTConfig:
    model: str = "toy-moe"
    tokenizer: str | None = None
    data: ChatData = field(default_factory=ChatData)
    tasks: TaskData = field(default_factory=TaskData)  # cold-start questions and held-out evaluation
    batch: BatchConfig = field(default_factory=BatchConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/sft"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=10, schedule="cosine"))
    eval_every: int = 0  # greedy held-out accuracy on tasks' test split every N steps; 0 = off
    eval_size: int = 100
    max_new_tokens: int = 128


# ---- data ------------------------------------------------------------------------------------------------------

def cold_start_rows(tasks: TaskData, seed: int) -> list[dict]:
    """Chat rows from the synthetic tasks' worked solutions: user = the prompt, assistant = reasoning + answer."""
    from r1kit.training.tasks import example_messages, load_examples

    rows = []
    for ex in load_examples(tasks, "train", seed):
        if not ex.get("solution"):
            raise R1kitError(f"example {ex.get('id')} has no worked solution; pass data.dataset instead")
        reply = {"role": "assistant", "content": ANSWER_FORMAT.format(answer=ex["answer"]),
                 "reasoning": ex["solution"]}
        rows.append({"messages": example_messages(ex, tasks) + [reply]})
    return rows


def chat_samples(cfg: SFTConfig, tokenizer) -> list[Sample]:
    from r1kit.data import load_chat_dataset
    from r1kit.training.packing import chat_sample

    rows = (load_chat_dataset(cfg.data.dataset, on_error=cfg.data.on_error) if cfg.data.dataset
            else cold_start_rows(cfg.tasks, cfg.run.seed))
    if not rows:
        raise R1kitError(f"{cfg.data.dataset}: no conversations to train on (from rejection sampling, this means "
                         "the sampled model answered nothing correctly: train the earlier stages longer)")
    return [chat_sample(tokenizer, row["messages"]) for row in rows]


def corpus_samples(data: CorpusData, tokenizer, seed: int) -> list[Sample]:
    from r1kit.training.packing import text_sample

    if data.file is None:
        from r1kit.data import synthetic_corpus

        n_chat = int(data.num_docs * data.chat_fraction)
        docs = synthetic_corpus(data.num_docs - n_chat, seed=seed, tasks=data.tasks, level=data.levels)
        if n_chat:
            from r1kit.data import TASKS

            tasks = TaskData(tasks=data.tasks or sorted(TASKS), level=max(data.levels), num_train=n_chat)
            for row in cold_start_rows(tasks, seed + 1):  # text_sample adds BOS/EOS itself
                text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
                text = text.removeprefix(tokenizer.bos_token or "").removesuffix(tokenizer.eos_token or "")
                docs.append(text)
    elif data.file.endswith(".txt"):
        path = Path(data.file)
        if not path.is_file():
            raise R1kitError(f"data file not found: {path}")
        docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    else:
        from r1kit.data import read_records

        records = read_records(data.file)
        missing = [i for i, r in enumerate(records) if not isinstance(r.get(data.text_field), str)]
        if missing:
            raise R1kitError(f"{data.file}: row {missing[0]} has no text field {data.text_field!r}")
        docs = [r[data.text_field] for r in records]
    if not docs:
        raise R1kitError("the pretraining corpus is empty")
    return [text_sample(tokenizer, d) for d in docs]


# ---- the objective ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KDConfig:
    """Logit distillation (forward KL to the teacher at a temperature), for teachers sharing the tokenizer."""

    weight: float = 0.0  # 0 = off
    temperature: float = 1.0

    def __post_init__(self):
        if self.weight < 0 or self.temperature <= 0:
            raise ConfigError("kd.weight must be >= 0 and kd.temperature > 0")


def mtp_depths(model, use_mtp: bool) -> int:
    return len(getattr(model, "mtp", [])) if use_mtp else 0


def target_counts(batches: list[Batch], depths: int) -> list[float]:
    """Number of scored targets over the step at depth 0 (next token) and each MTP depth k (token i+k+1)."""
    return [float(sum(b.target_mask(d + 1).sum().item() for b in batches)) for d in range(depths + 1)]


def lm_loss(model, batch: Batch, normalizers: list[float] | None = None, *, depths: int = 0, teacher=None,
            kd: KDConfig = KDConfig()) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch and its parts (floats, each already divided by its normalizer).

    normalizers: targets per depth over the whole step (`target_counts`); None = this micro-batch's own
    counts (token means). depths: MTP depths to train (0 = none).
    """
    from r1kit.training.losses import cross_entropy_loss, kd_loss

    norms = normalizers or target_counts([batch], depths)
    ids = batch.input_ids  # (B, T)
    kwargs = {} if batch.segment_ids is None else {"positions": batch.positions, "segment_ids": batch.segment_ids}
    hidden = model.hidden(ids, **kwargs)  # (B, T, d)
    logits = model.lm_head(hidden)[:, :-1]  # (B, T-1, V): position i predicts ids[i+1]
    mask = batch.target_mask(1)
    ce = cross_entropy_loss(logits, ids[:, 1:], mask, normalizer=max(norms[0], 1.0))
    loss, parts = ce, {"ce": ce.item()}
    if depths:
        ce_k = [cross_entropy_loss(lg[:, :-1], ids[:, k + 1:], batch.target_mask(k + 1),  # lg: (B, T-k, V)
                                   normalizer=max(norms[k], 1.0))
                for k, lg in enumerate(model.mtp_logits(hidden, ids, **kwargs)[:depths], start=1)]
        mtp = torch.stack(ce_k).mean()
        loss = loss + model.config.mtp_loss_weight * mtp
        parts["mtp"] = mtp.item()
    aux = model.aux_loss() if hasattr(model, "aux_loss") else None
    if aux is not None:
        loss = loss + aux * (mask.sum().item() / max(norms[0], 1.0))  # token-weighted like the CE
        parts["aux"] = aux.item()
    if teacher is not None and kd.weight > 0:
        with torch.no_grad():
            t_logits = teacher(ids, **kwargs)[:, :-1]
        kl = kd_loss(logits, t_logits, mask, kd.temperature, normalizer=max(norms[0], 1.0))
        loss = loss + kd.weight * kl
        parts["kd"] = kl.item()
    return loss, parts


# ---- evaluation -------------------------------------------------------------------------------------------------

@dataclass
class Evaluator:
    """Greedy accuracy on held-out task questions (tasks' test split), the same prompts as GRPO uses."""

    tokenizer: object
    tasks: TaskData
    examples: list[dict]
    max_new_tokens: int
    every: int

    @classmethod
    def build(cls, tokenizer, tasks: TaskData, size: int, max_new_tokens: int, every: int, seed: int):
        from r1kit.training.tasks import load_examples

        return cls(tokenizer, tasks, load_examples(tasks, "test", seed)[:size], max_new_tokens, every)

    @torch.no_grad()
    def __call__(self, model) -> float:
        from r1kit.generation import Engine
        from r1kit.training.grpo import greedy_accuracy

        was_training = model.training
        model.eval()  # no router statistics or balance loss from evaluation forwards
        try:
            engine = Engine(model, self.tokenizer, max_batch_size=min(64, max(1, len(self.examples))))
            return greedy_accuracy(engine, self.examples, self.tasks, self.max_new_tokens)
        finally:
            model.train(was_training)


# ---- the loop ----------------------------------------------------------------------------------------------------

def fit(run, samples: list[Sample], batch_cfg: BatchConfig, run_cfg: RunConfig, optim: OptimConfig, *, desc: str,
        teacher=None, kd: KDConfig = KDConfig(), evaluate: Evaluator | None = None, bias_update: bool = False) -> dict:
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


# ---- the recipes -------------------------------------------------------------------------------------------------

def pretrain(cfg: PretrainConfig) -> dict:
    from r1kit.training.loop import start_run

    run = start_run(cfg, cfg.run, cfg.optim, cfg.model, cfg.tokenizer)
    samples = corpus_samples(cfg.data, run.tokenizer, cfg.run.seed)
    return fit(run, samples, cfg.batch, cfg.run, cfg.optim, desc="pretrain",
               bias_update=cfg.run.router_bias_update is not False)  # on unless the config turns it off


def sft(cfg: SFTConfig) -> dict:
    from r1kit.training.loop import start_run

    run = start_run(cfg, cfg.run, cfg.optim, cfg.model, cfg.tokenizer)
    samples = chat_samples(cfg, run.tokenizer)
    evaluate = (Evaluator.build(run.tokenizer, cfg.tasks, cfg.eval_size, cfg.max_new_tokens, cfg.eval_every,
                                cfg.run.seed) if cfg.eval_every else None)
    return fit(run, samples, cfg.batch, cfg.run, cfg.optim, desc="sft", evaluate=evaluate,
               bias_update=bool(cfg.run.router_bias_update))  # frozen after pretraining unless asked


def _done(cfg, last) -> str:
    return f"done: {cfg.run.output_dir} (final model in {cfg.run.output_dir}/final)"


def register(sub: argparse._SubParsersAction) -> None:
    from r1kit.training.cli import add_recipe_command

    resume = "Re-running the same command resumes from the last checkpoint in run.output_dir."
    add_recipe_command(sub, "pretrain", PretrainConfig, pretrain, _done,
                       help="causal-LM pretraining (synthetic corpus or a text file)",
                       description=f"Pretrain from a YAML config. {resume}")
    add_recipe_command(sub, "sft", SFTConfig, sft, _done,
                       help="supervised fine-tuning on chat data (loss on the final assistant turn)",
                       description="SFT from a YAML config; without data.dataset it trains on the synthetic tasks' "
                                   f"worked solutions (cold start). {resume}",
                       example="--set optim.lr=3e-4 --set batch.packing=false")


__all__ = ["BatchConfig", "ChatData", "CorpusData", "Evaluator", "KDConfig", "PretrainConfig", "SFTConfig",
           "cold_start_rows", "fit", "lm_loss", "pretrain", "sft", "target_counts"]
