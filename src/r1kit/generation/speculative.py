"""Speculative decoding with the model's own MTP head: the draft distribution and the verification rule.

Each decode step of a speculating row feeds the main model two tokens, its last token x at position i and a draft
d for position i+1 proposed by the first MTP depth. The main model's distribution p at i verifies d: d is kept with
probability min(1, p(d) / q(d)) (q: the draft distribution d was drawn from), else a token is drawn from
norm(max(0, p - q)) (Leviathan et al. 2023, Chen et al. 2023), so every emitted token is distributed exactly as
plain sampling from p (filters and temperature included: p and q are `policy_probs`). When d is kept, the main
model's distribution at i+1 gives a second token for free. A greedy row's p and q are one-hot: d is kept iff it is
the main model's argmax, so greedy output is plain greedy output. The MTP depth then runs on the same two
positions (writing its own cache) and drafts the next token from the last kept one.

A row draws four uniforms per step from its own generator (accept, residual, bonus, next draft): seeded outputs
are reproducible and independent of the batch, but not the tokens plain decoding draws with the same seed.

Left out: more than one draft token (one MTP depth is what DeepSeek-V3 trains), tree drafts.
"""

from __future__ import annotations

import torch

from r1kit.generation.sampling import draw


def uniforms(generators: list[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """(n, B): n uniform draws per row, each row from its own generator."""
    return torch.stack([torch.rand(n, generator=g, device=device) for g in generators], dim=1)


def verify(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, u_accept: torch.Tensor,
           u_resample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling of one drafted token per row.

    p: (B, V) the target distribution; q: (B, V) the distribution the draft (B,) was drawn from; u_*: (B,) uniforms.
    Returns the token (B,), distributed as p, and whether it is the draft (B,) bool."""
    p_d = p.gather(1, draft[:, None]).squeeze(1)
    q_d = q.gather(1, draft[:, None]).squeeze(1)
    accepted = u_accept * q_d < p_d  # probability min(1, p(d) / q(d))
    residual = (p - q).clamp(min=0)  # (B, V)
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, p)  # p == q: never rejected
    return torch.where(accepted, draft, draw(residual, u_resample)), accepted
