"""Live-server helpers: a uvicorn server on a free loopback port in a thread, and a scripted fake model."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from contextlib import contextmanager

import uvicorn
from helpers.replay import ReplayModel
from helpers.scripted import ScriptedModel

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


def chain(tokens: list[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(tokens))


# The toy template's generation prompt ends in "<think>\n"; the scripted reply is "Think:ab</think> Yes<eos>".
# "x" and "y" follow each other forever (a reply that only stops at max_tokens or a time limit).
REPLY = ["\n", "T", "h", "i", "n", "k", ":", "a", "b", "</think>", " ", "Y", "e", "s"]
LOOP = [("x", "y"), ("y", "x")]


def scripted_engine(delay_s: float = 0.0, max_batch_size: int = 4, max_seq_len: int = 512,
                    prompt_cache: bool = False) -> Engine:
    tok = toy_tokenizer()
    model = ScriptedModel(tok, chain(REPLY) + LOOP, delay_s=delay_s, max_seq_len=max_seq_len)
    return Engine(model, tok, max_batch_size=max_batch_size, max_seq_len=max_seq_len, prompt_cache=prompt_cache)


def replay_engine(reply, tools=None) -> Engine:
    tok = toy_tokenizer()
    return Engine(ReplayModel(tok, reply), tok, max_batch_size=1, max_seq_len=2048, prefill_chunk=2048, tools=tools)
