"""Live-server helpers: a uvicorn server on a free loopback port in a thread, and a scripted fake model."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import uvicorn
from helpers.replay import ReplayModel

from r1kit.generation import Engine
from r1kit.serving.app import ServerConfig, create_app
from r1kit.tokenizer import toy_tokenizer


@contextmanager
def live_server(engine: Engine, **config):
    """Serve `engine` at http://127.0.0.1:PORT for the duration of the block; yields the base URL."""
    app = create_app(engine, ServerConfig(**{"model_name": "toy", **config}))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class _Config:
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
        self.config = _Config(dim=vocab, max_seq_len=max_seq_len, eos_token_id=[eos])
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

    def forward_cached(self, input_ids, cache_pos, *, kv_len, cache_rows=None):
        time.sleep(self.delay_s)
        return torch.nn.functional.one_hot(input_ids, self.config.dim).float()  # (B, T, V)


def chain(tokens: list[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(tokens))


# The toy template's generation prompt ends in "<think>\n"; the scripted reply is "Think:ab</think> Yes<eos>".
# "x" and "y" follow each other forever (a reply that only stops at max_tokens or a time limit).
REPLY = ["\n", "T", "h", "i", "n", "k", ":", "a", "b", "</think>", " ", "Y", "e", "s"]
LOOP = [("x", "y"), ("y", "x")]


def scripted_engine(delay_s: float = 0.0, max_batch_size: int = 4, max_seq_len: int = 512) -> Engine:
    tok = toy_tokenizer()
    model = ScriptedModel(tok, chain(REPLY) + LOOP, delay_s=delay_s, max_seq_len=max_seq_len)
    return Engine(model, tok, max_batch_size=max_batch_size, max_seq_len=max_seq_len)


def replay_engine(reply, tools=None) -> Engine:
    tok = toy_tokenizer()
    return Engine(ReplayModel(tok, reply), tok, max_batch_size=1, max_seq_len=2048, prefill_chunk=2048, tools=tools)
