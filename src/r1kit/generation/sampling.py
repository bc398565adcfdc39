"""Sampling parameters and the per-step sampler.

Every row of a batch carries its own parameters and its own seeded torch.Generator, so a request's output
depends only on its seed, never on what else shares the batch. A row draws one uniform number per step and
inverts the CDF of its filtered distribution (top-k, top-p, min-p applied to temperature-scaled probabilities).
Temperature 0 is greedy. Log-probabilities returned to callers are those of the temperature-scaled
distribution before filtering — the policy GRPO optimizes (as TRL and verl compute it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from r1kit.errors import ConfigError


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (excluded from the returned text)
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p must be in [0, 1), got {self.min_p}")


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> next tokens (B,) and their log-probabilities (B,) under the temperature-scaled policy."""
    logits = logits.float()
    if all(p.temperature == 0 for p in params):  # greedy: no (B, V) log-softmax to materialize
        tokens = argmax(logits)
        return tokens, logits.gather(1, tokens[:, None]).squeeze(1) - logits.logsumexp(dim=-1)
    temps = torch.tensor([p.temperature for p in params])
    greedy = temps == 0
    if not all(p.temperature in (0, 1) for p in params):
        logits = logits / torch.where(greedy, 1.0, temps)[:, None]
    logp = torch.log_softmax(logits, dim=-1)  # (B, V)
    tokens = torch.where(greedy, argmax(logits), _sample_filtered(logp, params, generators))
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def argmax(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """(B, V) -> (B,): the first index of each row's maximum, as `torch.argmax`, several times faster on CPU.

    A CPU argmax over a 50K-150K vocabulary is a scalar loop (about 1 ms for 16 rows of 49K); `amax` is
    vectorized. So take the max of each block of `block` columns, pick the first block holding the row's max,
    and run argmax over that block alone."""
    B, V = x.shape
    n_blocks = V // block
    if n_blocks < 2:
        return x.argmax(dim=-1)
    x = x.contiguous()
    maxima = x.as_strided((B, n_blocks, block), (V, block, 1)).amax(dim=-1)  # (B, n_blocks)
    if n_blocks * block < V:  # the short last block
        maxima = torch.cat([maxima, x[:, n_blocks * block:].amax(dim=-1, keepdim=True)], dim=1)
    start = maxima.argmax(dim=-1) * block  # (B,)
    cols = (start[:, None] + torch.arange(block)).clamp(max=V - 1)  # clamped repeats come after the real last
    return start + x.gather(1, cols).argmax(dim=-1)


def _sample_filtered(logp: torch.Tensor, params: list[SamplingParams], generators) -> torch.Tensor:
    V = logp.shape[1]
    u = torch.cat([torch.rand(1, generator=g) for g in generators])  # (B,) one draw per row
    probs = logp.exp()
    if all(p.top_p >= 1 and p.top_k == 0 and p.min_p == 0 for p in params):
        cdf = probs.cumsum(dim=-1)
        idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1)
        return idx.clamp(max=V - 1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    top_p = torch.tensor([p.top_p for p in params])[:, None]
    top_k = torch.tensor([p.top_k or V for p in params])[:, None]
    min_p = torch.tensor([p.min_p for p in params])[:, None]
    ranks = torch.arange(V)[None, :]
    keep = (sorted_p.cumsum(dim=-1) - sorted_p < top_p) & (ranks < top_k) & (sorted_p >= min_p * sorted_p[:, :1])
    keep[:, 0] = True  # the most likely token always survives
    cdf = (sorted_p * keep).cumsum(dim=-1)
    # every filter keeps a prefix of the sorted tokens, so the first index whose cdf reaches u*total is kept
    choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=V - 1)
    return order.gather(1, choice).squeeze(1)
