"""A fake model for the Engine whose next token depends only on the current one (generation, serving and tool
tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class FakeConfig:
    dim: int
    max_seq_len: int
    eos_token_id: list[int]
    pad_token_id: int = 0


class ScriptedModel(torch.nn.Module):
    """A fake model for the Engine whose next token depends only on the current one, by a fixed table.

    `script` maps a token to its successor (every other token is followed by EOS). The hidden state is the
    one-hot current token and the head is the transition table scaled by 100, so the choice is certain even
    at temperature 1. `delay_s` slows every forward, to make timing cases deterministic.
    """

    def __init__(self, tokenizer, script: list[tuple[str, str]], delay_s: float = 0.0, max_seq_len: int = 512):
        super().__init__()
        vocab = len(tokenizer)
        eos = tokenizer.eos_token_id
        self.config = FakeConfig(dim=vocab, max_seq_len=max_seq_len, eos_token_id=[eos])
        self.embed_tokens = torch.nn.Embedding(vocab, 1)
        self.lm_head = torch.nn.Linear(vocab, vocab, bias=False)
        table = torch.zeros(vocab, vocab)
        table[eos, :] = 100.0
        for cur, nxt in script:
            cur_id, nxt_id = (tokenizer.convert_tokens_to_ids(t) for t in (cur, nxt))
            table[:, cur_id] = 0.0
            table[nxt_id, cur_id] = 100.0
        self.lm_head.weight.data = table
        self.delay_s = delay_s

    def setup_cache(self, max_batch: int, max_seq_len: int) -> None:
        pass

    def copy_cache_rows(self, src: int, dst, length: int) -> None:
        pass  # no cache: the next token depends on the current one only

    def move_cache_row(self, src: int, dst: int, length: int) -> None:
        pass

    def swap_cache_rows(self, a: int, b: int, length: int) -> None:
        pass

    def forward_cached(self, input_ids, cache_pos, *, kv_len, cache_rows=None):
        time.sleep(self.delay_s)
        return torch.nn.functional.one_hot(input_ids, self.config.dim).float()  # (B, T, V)
