"""A fake model for the Engine that replies with scripted text (serving and evaluation tests)."""

from __future__ import annotations

import torch

from helpers.scripted import FakeConfig


class ReplayModel(torch.nn.Module):
    """A fake model for the Engine that answers every prompt with a scripted text: `reply(prompt_text)` picks it
    once the prompt is prefilled, so a conversation's turns can differ. The prompts it saw are kept in `prompts`
    (as rendered by the chat template), to compare with hand-written ones.

    It has no cache: each forward emits the next reply token (EOS past the end), which the engine's prefill (last
    position), decode steps and tool-output insertions read once each, in order; tokens the engine inserts (tool
    output) are not part of the script. It serves one request at a time (engine max_batch_size=1), since it
    remembers only the latest prompt, and needs the whole prompt in one prefill chunk.
    """

    def __init__(self, tokenizer, reply, max_seq_len: int = 2048):
        super().__init__()
        vocab = len(tokenizer)
        self.tokenizer, self.reply, self.eos = tokenizer, reply, tokenizer.eos_token_id
        self.config = FakeConfig(dim=vocab, max_seq_len=max_seq_len, eos_token_id=[self.eos])
        self.embed_tokens = torch.nn.Embedding(vocab, 1)
        self.lm_head = torch.nn.Linear(vocab, vocab, bias=False)
        self.lm_head.weight.data = 100.0 * torch.eye(vocab)  # the hidden state is the one-hot next token
        self.prompts: list[str] = []
        self._prompt_ids: list[int] = []
        self._reply_ids: list[int] = []
        self._next = 0

    def setup_cache(self, max_batch: int, max_seq_len: int) -> None:
        pass

    def copy_cache_rows(self, src: int, dst, length: int) -> None:
        pass

    def forward_cached(self, input_ids, cache_pos, *, kv_len, cache_rows=None):
        assert input_ids.shape[0] == 1, "ReplayModel serves one request at a time"
        if int(cache_pos[0, 0]) == 0:  # the prefill: the prompt picks the reply
            assert cache_rows is not None, "the prompt must fit in one prefill chunk"
            self._prompt_ids = input_ids[0].tolist()
            self.prompts.append(self.tokenizer.decode(self._prompt_ids))
            self._reply_ids = self.tokenizer(self.reply(self.prompts[-1]), add_special_tokens=False).input_ids
            self._next = 0
        script = self._reply_ids + [self.eos]
        nxt = torch.tensor(script[min(self._next, len(script) - 1)])
        self._next += 1
        return torch.nn.functional.one_hot(nxt, self.config.dim).float().expand(1, input_ids.shape[1], -1)
