"""Sampling parameters and the per-step sampler.

Every row of a batch carries its own parameters and its own seeded torch.Generator (on the model's device), so
a request's output depends only on its seed, never on what else shares the batch. A row draws one uniform number
per step and inverts the CDF of its filtered distribution: temperature, then min-p, top-k, and top-p on what
top-k left, renormalized (vLLM's order; see `keep_sorted`). Temperature 0 is greedy. Log-probabilities returned
to callers are those of the temperature-scaled distribution before filtering — the policy GRPO optimizes (as TRL
and verl compute it). The sampler never waits for the device: tokens and log-probs come back as device tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

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


@dataclass
class SamplingTensors:
    """The sampling parameters of a batch's rows as (B,) tensors on the logits' device.

    `sample` builds them from the params when not given; the engine keeps one per cache row instead (written
    when a request is admitted, sliced each step), so a decode step copies nothing host -> device."""

    temperature: torch.Tensor  # (B,) float32
    top_p: torch.Tensor  # (B,) float32
    top_k: torch.Tensor  # (B,) int64, 0: off
    min_p: torch.Tensor  # (B,) float32

    @classmethod
    def from_params(cls, params: list[SamplingParams], device: torch.device | str) -> SamplingTensors:
        values = torch.tensor([[p.temperature, p.top_p, p.top_k, p.min_p] for p in params], dtype=torch.float64,
                              device=device)  # (B, 4): one host -> device copy
        return cls(values[:, 0].float(), values[:, 1].float(), values[:, 2].long(), values[:, 3].float())

    @classmethod
    def empty(cls, rows: int, device: torch.device | str) -> SamplingTensors:
        return cls.from_params([SamplingParams()] * rows, device)

    def __getitem__(self, index) -> SamplingTensors:
        return SamplingTensors(*(getattr(self, f.name)[index] for f in fields(self)))

    def __setitem__(self, index, other: SamplingTensors) -> None:
        for f in fields(self):
            getattr(self, f.name)[index] = getattr(other, f.name)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A request's generator, on the device its draws are made on (a CPU generator draws as before)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator],
    tensors: SamplingTensors | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> next tokens (B,) and their log-probabilities (B,) under the temperature-scaled policy.

    Both stay on the logits' device: nothing here waits for the device. generators: one per row, on that device.
    tensors: `params` as device tensors (built here when None)."""
    logits = logits.float()
    if all(p.temperature == 0 for p in params):  # greedy: no (B, V) log-softmax to materialize
        tokens = argmax(logits)
        return tokens, logits.gather(1, tokens[:, None]).squeeze(1) - logits.logsumexp(dim=-1)
    t = tensors if tensors is not None else SamplingTensors.from_params(params, logits.device)
    greedy = t.temperature == 0  # (B,)
    if not all(p.temperature in (0, 1) for p in params):
        logits = logits / torch.where(greedy, 1.0, t.temperature)[:, None]
    logp = torch.log_softmax(logits, dim=-1)  # (B, V)
    u = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])  # (B,) one draw per row
    tokens = _sample_filtered(logp, params, t, u)
    if any(p.temperature == 0 for p in params):
        tokens = torch.where(greedy, argmax(logits), tokens)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def argmax(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """(B, V) -> (B,): the first index of each row's maximum, as `torch.argmax`, several times faster on CPU.

    A CPU argmax over a 50K-150K vocabulary is a scalar loop (about 1 ms for 16 rows of 49K); `amax` is
    vectorized. So take the max of each block of `block` columns, pick the first block holding the row's max,
    and run argmax over that block alone. Other devices use `torch.argmax`."""
    B, V = x.shape
    n_blocks = V // block
    if n_blocks < 2 or x.device.type != "cpu":
        return x.argmax(dim=-1)
    x = x.contiguous()
    maxima = x.as_strided((B, n_blocks, block), (V, block, 1)).amax(dim=-1)  # (B, n_blocks)
    if n_blocks * block < V:  # the short last block
        maxima = torch.cat([maxima, x[:, n_blocks * block:].amax(dim=-1, keepdim=True)], dim=1)
    start = maxima.argmax(dim=-1) * block  # (B,)
    cols = (start[:, None] + torch.arange(block, device=x.device)).clamp(max=V - 1)  # clamped repeats come last
    return start + x.gather(1, cols).argmax(dim=-1)


def keep_sorted(sorted_p: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Which tokens survive the filters: sorted_p (B, V) is each row's distribution sorted descending; top_k,
    top_p, min_p are (B,). Returns (B, V) bool, always a prefix of each row (the most likely token included).

    The order is vLLM's (v1): min_p (relative to the most likely token), then top-k, then top-p on the
    distribution renormalized over what is left. transformers applies top-k then top-p the same way (and min_p
    last; min_p and top-k commute, min_p and top-p do not). A tie with the k-th probability survives top-k, as in
    both."""
    V = sorted_p.shape[1]
    k = torch.where(top_k > 0, top_k, V).clamp(max=V)  # (B,)
    kth = sorted_p.gather(1, (k - 1)[:, None])  # (B, 1)
    keep = (sorted_p >= kth) & (sorted_p >= min_p[:, None] * sorted_p[:, :1])  # (B, V)
    kept = sorted_p * keep
    above = kept.cumsum(dim=-1) - kept  # (B, V) kept mass ranked above each token
    in_top_p = above < top_p[:, None] * kept.sum(dim=-1, keepdim=True)  # top-p of the renormalized distribution
    keep &= in_top_p | (top_p >= 1)[:, None]
    keep[:, 0] = True
    return keep


def _sample_filtered(logp: torch.Tensor, params: list[SamplingParams], t: SamplingTensors,
                     u: torch.Tensor) -> torch.Tensor:
    """Invert each row's filtered CDF at its uniform draw u (B,).

    A row without filters inverts its CDF in vocabulary order, a filtered row in sorted order (its kept tokens
    are a prefix there). The choice is made per row, so a request's tokens never depend on the filters of the
    other rows in its batch."""
    V = logp.shape[1]
    probs = logp.exp()
    cdf = probs.cumsum(dim=-1)  # (B, V)
    plain = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp(max=V - 1)
    if all(p.top_p >= 1 and p.top_k == 0 and p.min_p == 0 for p in params):
        return plain
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cdf = (sorted_p * keep_sorted(sorted_p, t.top_k, t.top_p, t.min_p)).cumsum(dim=-1)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=V - 1)
    filtered = order.gather(1, choice).squeeze(1)
    unfiltered = (t.top_p >= 1) & (t.top_k == 0) & (t.min_p == 0)  # (B,)
    return torch.where(unfiltered, plain, filtered)


def policy_probs(logits: torch.Tensor, params: list[SamplingParams],
                 t: SamplingTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution `sample` draws from, per row, as (B, V) probabilities: temperature, then the filters,
    renormalized; a greedy row is one-hot at its argmax. Also returns the temperature-scaled log-probs (B, V)
    (unfiltered: what `sample` reports). Speculative decoding verifies drafts against these."""
    logits = logits.float()
    greedy = t.temperature == 0  # (B,)
    logp = torch.log_softmax(logits / torch.where(greedy, 1.0, t.temperature)[:, None], dim=-1)
    probs = logp.exp()
    if not all(p.top_p >= 1 and p.top_k == 0 and p.min_p == 0 for p in params):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(
            1, order, keep_sorted(sorted_p, t.top_k, t.top_p, t.min_p))
        probs = probs * keep
        probs = probs / probs.sum(dim=-1, keepdim=True)
    if any(p.temperature == 0 for p in params):
        onehot = torch.zeros_like(probs).scatter(1, argmax(logits)[:, None], 1.0)
        probs = torch.where(greedy[:, None], onehot, probs)
    return probs, logp


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Invert each row's CDF of probs (B, V), not necessarily normalized, at u (B,) in [0, 1) -> tokens (B,).

    Searching from the right never picks a token of probability 0, even at u = 0."""
    cdf = probs.cumsum(dim=-1)
    index = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], side="right").squeeze(1)
    return index.clamp(max=probs.shape[1] - 1)
