"""Causal-LM pretraining: `r1kit pretrain --config pretrain.yaml`.

Raw text (the synthetic corpus, or a .txt / JSONL `text` file) through the shared loop (`fit`), with the MoE
router-bias update on (the auxiliary-loss-free balancing of DeepSeek-V3's pretraining) unless the config turns
it off. Re-running the same command resumes from the last checkpoint in run.output_dir.
"""

from __future__ import annotations

from dataclasses import field

from r1kit.config import configclass
from r1kit.training.fit import BatchConfig, fit
from r1kit.training.lm_data import CorpusData, corpus_samples
from r1kit.training.loop import OptimConfig, RunConfig, start_run


@configclass
class PretrainConfig:
    model: str = "toy-moe"
    tokenizer: str | None = None
    data: CorpusData = field(default_factory=CorpusData)
    batch: BatchConfig = field(default_factory=lambda: BatchConfig(seq_len=256))
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/pretrain"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, schedule="cosine"))


def pretrain(cfg: PretrainConfig) -> dict:
    run = start_run(cfg, cfg.run, cfg.optim, cfg.model, cfg.tokenizer)
    samples = corpus_samples(cfg.data, run.tokenizer, cfg.run.seed)
    return fit(run, samples, cfg.batch, cfg.run, cfg.optim, desc="pretrain",
               bias_update=cfg.run.router_bias_update is not False)  # on unless the config turns it off


__all__ = ["PretrainConfig", "pretrain"]
