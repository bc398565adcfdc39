"""The engine worker: one thread owns the (not thread-safe) generation Engine and runs its step loop.

HTTP handlers never touch the engine. They `submit` a tokenized prompt with a `sink` (a thread-safe callable)
and get a `Ticket`; the worker pulls submissions and cancellations from an inbox between decode steps, so a
new request joins the running batch at the next step and a finished one leaves it (continuous batching is the
Engine's; this module only feeds it). After every step the worker sends each touched request's new text to its
sink as an `Update`; the last update of a request carries its `Completion`.

Admission control: at most `max_batch_size` requests run (the Engine's cache rows) and at most `max_queue` wait;
`submit` raises `QueueFull` beyond that, which the server answers with 429. A request running longer than
`request_timeout_s` is stopped with finish_reason "length" (its time budget is spent).

Left out: priorities and fairness (first come, first served), preemption, multiple engines.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from r1kit.errors import R1kitError
from r1kit.generation import Completion, Engine, Request, SamplingParams


class QueueFull(R1kitError):
    """The server holds as many requests as it may; the client should retry later."""


@dataclass
class Update:
    text: str  # new reply text since the previous update (may be empty)
    completion: Completion | None = None  # set on the last update of the request
    error: str | None = None  # set when the engine failed; the request is over


@dataclass
class Ticket:
    """A submitted request, as the HTTP side sees it."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    prefilled_think: bool
    sink: Callable[[Update], None]
    deadline: float  # time.monotonic() after which the request is stopped
    request: Request | None = None  # the engine's request, set by the worker thread
    sent: int = 0  # characters of text already sent to the sink
    finished: bool = False


class EngineWorker:
    def __init__(self, engine: Engine, *, max_queue: int = 256, request_timeout_s: float = 600.0):
        self.engine, self.max_queue, self.request_timeout_s = engine, max_queue, request_timeout_s
        self._inbox: queue.SimpleQueue[tuple[str, Ticket | None]] = queue.SimpleQueue()
        self._live: dict[int, Ticket] = {}  # worker thread only: tickets handed to the engine
        self._count_lock = threading.Lock()
        self._in_system = 0  # submitted and not finished (running + waiting), guarded by _count_lock
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="r1kit-engine", daemon=True)

    # ---- any thread -------------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.engine.max_batch_size + self.max_queue

    def load(self) -> dict[str, int]:
        with self._count_lock:
            held = self._in_system
        running = min(held, self.engine.max_batch_size)
        return {"running": running, "waiting": held - running, "capacity": self.capacity}

    def submit(self, prompts: list[tuple[list[int], bool, SamplingParams]],
               sink: Callable[[int, Update], None]) -> list[Ticket]:
        """Queue prompts (ids, prefilled_think, params) together or not at all; sink(index, update) gets updates.

        Raises QueueFull when the server cannot hold all of them.
        """
        with self._count_lock:
            if self._in_system + len(prompts) > self.capacity:
                raise QueueFull(f"the server is at capacity ({self.capacity} requests); retry later")
            self._in_system += len(prompts)
        deadline = time.monotonic() + self.request_timeout_s
        tickets = [Ticket(next(self._ids), ids, params, prefilled, (lambda u, i=i: sink(i, u)), deadline)
                   for i, (ids, prefilled, params) in enumerate(prompts)]
        for t in tickets:
            self._inbox.put(("submit", t))
        return tickets

    def cancel(self, tickets: list[Ticket]) -> None:
        """Stop these requests (the client went away); no more updates are sent for them."""
        for t in tickets:
            self._inbox.put(("cancel", t))

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._inbox.put(("stop", None))
        self._thread.join(timeout)

    # ---- the worker thread ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if not self._drain_inbox(block=not self.engine.has_work()):
                return
            self._expire(time.monotonic())
            if not self.engine.has_work():
                continue
            try:
                touched = self.engine.step()
            except Exception as e:  # noqa: BLE001  (a failed step fails its requests, never the server)
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
                continue
            for req in touched:
                ticket = self._live.get(req.id)
                if ticket is not None:
                    self._publish(ticket)

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued submissions and cancellations; False when asked to stop."""
        while True:
            try:
                kind, ticket = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                return False
            if kind == "submit":
                self._admit(ticket)
            elif kind == "cancel" and not ticket.finished:
                if ticket.request is not None:
                    self.engine.abort(ticket.request)
                self._finish(ticket)

    def _admit(self, ticket: Ticket) -> None:
        try:
            req = self.engine.add_request(ticket.prompt_ids, ticket.params)
        except R1kitError as e:
            ticket.sink(Update("", error=str(e)))
            self._finish(ticket)
            return
        req.prefilled_think = ticket.prefilled_think  # the template knows better than the last few ids
        ticket.request = req
        self._live[req.id] = ticket

    def _publish(self, ticket: Ticket) -> None:
        req = ticket.request
        text = req.text if req.done else self.engine.visible_text(req)
        delta = text[ticket.sent:] if len(text) > ticket.sent else ""
        ticket.sent = max(ticket.sent, len(text))
        if req.done:
            ticket.sink(Update(delta, completion=req.completion()))
            self._finish(ticket)
        elif delta:
            ticket.sink(Update(delta))

    def _expire(self, now: float) -> None:
        for ticket in [t for t in self._live.values() if now > t.deadline]:
            req = ticket.request
            self.engine.abort(req)
            req.finish_reason = "length"  # out of time: the budget is spent, as with max_tokens
            self._publish(ticket)

    def _fail_all(self, message: str) -> None:
        for ticket in list(self._live.values()):
            self.engine.abort(ticket.request)
            ticket.sink(Update("", error=message))
            self._finish(ticket)

    def _finish(self, ticket: Ticket) -> None:
        ticket.finished = True
        if ticket.request is not None:
            self._live.pop(ticket.request.id, None)
        with self._count_lock:
            self._in_system -= 1
