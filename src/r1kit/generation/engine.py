"""The generation engine: continuous batching over a preallocated KV cache.

One Engine serves `r1kit.generate`, GRPO rollouts, rejection sampling, evaluation, chat and the server.
- The cache is allocated once (max_batch_size rows x max_seq_len slots); a request owns one row while it runs.
- Each `step()` admits waiting requests into free rows (their prompts are prefilled together, right-padded,
  in chunks of `prefill_chunk` tokens so long prompts stay within memory), then runs one batched decode step
  over the running rows only: a finished request leaves its row at once and the next waiting one takes it.
- Stopping is per request: EOS ids, stop strings (matched on the decoded text, excluded from it) and
  max_new_tokens. Text is detokenized incrementally, so streaming and stop strings cost O(new tokens).
- Running requests are kept in the lowest rows (a request is moved down when one below it finishes), so a
  decode step reads the cache as a slice instead of gathering rows.
- Every tensor lives on the model's device (per-request generators included). What a decode step needs per row
  (last token, its position, sampling parameters) stays there between steps (`RowState`), so a step copies
  nothing host -> device and makes one device -> host transfer: the sampled tokens and their log-probs.

- Prefix sharing: requests admitted with the same prompt (a GRPO group, an eval problem's k samples) prefill it
  once; the others copy its cache rows (`_admit`).
- Prompt cache (`prompt_cache=True`, on in `r1kit serve` and `r1kit chat`): a finished request's row keeps its
  tokens' K/V while the row is free; a new request whose prompt starts with some of those tokens (the system
  prompt and chat template, the earlier turns of a conversation) gets those slots (copied into a free row, or
  that row itself) and prefills only the rest, as llama.cpp's server slots and vLLM's prefix caching do. The
  model's weights must not change meanwhile (call
  `clear_prompt_cache` after an update), so training rollouts leave it off.
- Tool calls (`tools=ToolConfig(...)`, format in r1kit/tools/python.py): a request whose text ends a `<code>`
  cell pauses; the cell runs in the request's sandboxed interpreter on a worker thread while the other rows keep
  decoding; its output is tokenized once, appended to the request's tokens (marked as not produced by the model)
  and run into the same cache row, and decoding resumes (`_resume`). The model's own tokens are never
  re-encoded from text, so a trainer sees exactly the ids that were sampled.

- `compile=True` runs the decode step's model part (forward over rows 0..n-1 and the head) through
  `torch.compile(dynamic=True)`: one graph for every batch size and cache length, built on the first decode
  step (minutes on a CPU); prefill, tool-output insertion and speculative steps stay eager.
- Static decode shapes (`static_shapes=True`; on by default with `compile=True` on CUDA): the decode step runs
  a batch padded to a power of two and attends a cache length rounded up to `KV_BUCKET` slots, so it takes one of
  a few fixed shapes, which is what CUDA graphs replay (on CUDA the compile uses `mode="reduce-overhead"`: one
  graph recorded per shape, the caches marked as static addresses). Padding rows are free rows: they attend with
  their position set to the last slot and write only there, which no kept prompt-cache row holds (a request
  ends by the last slot, and its last sampled token is never run into the row); their logits are dropped
  (vLLM pads to its captured batch sizes the same way).

Left out: paged attention (the prompt cache reuses whole rows, one earlier request per row). For GPU-scale
serving use the vLLM backend (`r1kit.generation.vllm_backend`) behind the same `generate` interface.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from r1kit.errors import R1kitError
from r1kit.generation import speculative as spec
from r1kit.generation.sampling import (
    SamplingParams,
    SamplingTensors,
    draw,
    make_generator,
    policy_probs,
    sample,
)
from r1kit.models.linear import PackedLinears, packing_supported
from r1kit.reasoning import prompt_opens_think, split_reasoning
from r1kit.tools.python import CODE_CLOSE, PythonSession, ToolCall, ToolConfig, code_of, render_output


@dataclass
class Completion:
    text: str  # the reply as generated (think tags included), stop string and EOS excluded
    reasoning: str
    answer: str
    token_ids: list[int]  # generated ids, EOS included when the model emitted it
    logprobs: list[float]  # log-probability of each generated id under the temperature-scaled policy (0.0 for
    # tool output)
    finish_reason: str  # "stop" (EOS or stop string) | "length" | "abort"
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose K/V came from the prompt cache instead of a prefill
    prefilled_think: bool = False  # the prompt opened <think>: the reply starts inside the reasoning
    tool_calls: list[ToolCall] = field(default_factory=list)
    model_mask: list[bool] | None = None  # per token id: True = sampled by the model, False = tool output;
    # None: every token is the model's (no tool ran)

    def model_token_mask(self) -> list[bool]:
        """Which of `token_ids` the model produced (the tokens a trainer may optimize)."""
        return list(self.model_mask) if self.model_mask is not None else [True] * len(self.token_ids)


@dataclass(eq=False)  # identity: the engine looks requests up in its lists
class Request:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    prefilled_think: bool = False
    generator: torch.Generator | None = None
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""  # decoded so far (stable part)
    finish_reason: str | None = None
    cut_at_stop: bool = False
    row: int | None = None
    cached: int = 0  # leading prompt tokens already in the row (prompt cache): the prefill starts after them
    _prefix: int = 0  # incremental detokenizer offsets into out_ids
    _read: int = 0
    _key: tuple[int, ...] | None = None  # the prompt ids as a dict key (prefix sharing)
    model_mask: list[bool] = field(default_factory=list)  # per out_id: sampled (True) or tool output (False)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_code: str | None = None  # a finished cell waiting to be submitted
    tool_future: cf.Future | None = None  # the running cell
    session: PythonSession | None = None  # the reply's interpreter (tools only)

    @property
    def paused(self) -> bool:
        """Waiting for a tool call: holds its cache row but is not decoded."""
        return self.tool_code is not None or self.tool_future is not None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def completion(self) -> Completion:
        reasoning, answer = split_reasoning(self.text, self.prefilled_think)
        mask = list(self.model_mask) if self.tool_calls else None
        return Completion(self.text, reasoning, answer, list(self.out_ids), list(self.logprobs),
                          self.finish_reason or "abort", len(self.prompt_ids), self.cached, self.prefilled_think,
                          list(self.tool_calls), mask)


@dataclass
class RowState:
    """Per cache row, on the model's device: what a decode step reads without asking the host."""

    token: torch.Tensor  # (R,) the row's last sampled token
    pos: torch.Tensor  # (R,) its position (the cache slot it is written to when decoded)
    sampling: SamplingTensors  # (R,) the row's request's sampling parameters
    draft: torch.Tensor  # (R,) speculative decoding: the MTP draft for position pos + 1
    draft_probs: torch.Tensor | None  # (R, V) the distribution the draft was drawn from (None: not speculating)
    index: torch.Tensor  # (R,) 0..R-1

    @classmethod
    def allocate(cls, rows: int, device: torch.device, vocab: int | None = None) -> RowState:
        zeros = torch.zeros(rows, dtype=torch.long, device=device)
        probs = None if vocab is None else torch.zeros(rows, vocab, device=device)
        return cls(zeros, zeros.clone(), SamplingTensors.empty(rows, device), zeros.clone(), probs,
                   torch.arange(rows, device=device))

    def move(self, src: int, dst: int) -> None:
        self.token[dst], self.pos[dst], self.draft[dst] = self.token[src], self.pos[src], self.draft[src]
        self.sampling[dst] = self.sampling[src]
        if self.draft_probs is not None:
            self.draft_probs[dst] = self.draft_probs[src]


class Engine:
    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, max_seq_len: int | None = None,
                 prefill_chunk: int = 512, matmul_dtype: torch.dtype | None = None, share_prefixes: bool = True,
                 speculative: str | None = None, tools: ToolConfig | None = None, compile: bool = False,
                 prompt_cache: bool = False, static_shapes: bool | None = None):
        """prompt_cache: free rows keep their last request's K/V, and a new prompt that starts with those tokens
        prefills only the rest (see the module docstring); the weights must not change while it is on.
        compile: run the decode step through torch.compile (opt-in: the first decode step compiles for minutes
        on a CPU; measured in README "Generation", benchmarks/bench_compile.py). On CUDA: CUDA graphs.
        static_shapes: pad each decode step to a few fixed shapes (module docstring); None: with compile on CUDA.
        tools: the model may call the sandboxed Python interpreter (r1kit/tools/python.py) with these limits.
        speculative: "mtp" drafts one token per step with the model's MTP head and verifies it with the main
        model in the same forward (see generation/speculative.py): up to 2 tokens per step, same distribution.
        share_prefixes: requests with identical prompt ids prefill once and copy its cache rows (see `_admit`).
        matmul_dtype: torch.bfloat16 runs an fp32 model's linear layers in bf16 on packed weights (mixed-
        precision rollouts: faster on CPUs with AMX, log-probs off by bf16 rounding); None keeps the model's
        dtype (a bf16 model is packed anyway, see models/linear.py).

        The engine runs where the model's parameters are (`device`); move the model before adding requests."""
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.prefill_chunk = max_batch_size, prefill_chunk
        self.max_seq_len = min(max_seq_len or model.config.max_seq_len, model.config.max_seq_len)
        self.eos_ids = set(model.config.eos_token_id or [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free_rows = list(range(max_batch_size))
        self._ids = itertools.count()
        self._cache_ready = False
        self.rows: RowState | None = None  # allocated with the cache, on the model's device
        self._packed = PackedLinears(model, matmul_dtype)
        self.last_completion: Completion | None = None  # of the last `stream` call
        self.share_prefixes = share_prefixes
        if speculative not in (None, "mtp"):
            raise R1kitError(f"speculative must be None or 'mtp', got {speculative!r}")
        if speculative and not len(getattr(model, "mtp", [])):
            raise R1kitError("speculative='mtp' needs a model with an MTP module (n_mtp_layers >= 1)")
        self.speculative = speculative == "mtp"
        self.drafted = self.accepted = 0  # speculative decoding: drafts verified and kept
        self._prefix_hidden: dict[object, torch.Tensor] = {}  # prompt -> (d,) last hidden, while held
        self._holders: dict[object, list[Request]] = {}  # prompt -> the running requests whose rows hold it
        if tools is not None and self.speculative:
            raise R1kitError("tool calls and speculative decoding cannot be combined yet")
        if prompt_cache and self.speculative:  # the MTP depth's cache would need the same bookkeeping
            raise R1kitError("prompt_cache and speculative decoding cannot be combined yet")
        self.prompt_cache = prompt_cache
        self._retained: dict[int, list[int]] = {}  # free row -> the tokens whose K/V it holds, oldest first
        self.cached_tokens = 0  # prompt tokens served from the prompt cache (all requests)
        self.tools = tools
        self._tool_pool = cf.ThreadPoolExecutor(tools.workers, thread_name_prefix="r1kit-tool") if tools else None
        if compile and packing_supported(model, matmul_dtype):
            raise R1kitError("compile=True cannot compile oneDNN-packed bf16 weights (bf16 matmuls, or a bf16 model "
                             "on the CPU): inductor fails to lower them; use either compile or bf16 matmuls")
        cuda = self.device.type == "cuda"
        self.static_shapes = compile and cuda if static_shapes is None else static_shapes
        self._cuda_graphs = compile and cuda and self.static_shapes
        if not compile:
            self._decode_logits_fn = self._decode_logits
        else:  # on CUDA with static shapes, inductor's CUDA graph trees record one graph per shape
            mode = "reduce-overhead" if self._cuda_graphs else None
            self._decode_logits_fn = torch.compile(self._decode_logits, dynamic=True, mode=mode)

    @property
    def device(self) -> torch.device:
        """The model's device, where every tensor of the engine is made."""
        return next(self.model.parameters()).device

    # ---- requests ---------------------------------------------------------------------------------------------

    def encode(self, prompt: str | list[dict] | list[int]) -> tuple[list[int], bool]:
        """Token ids of a prompt (string, chat messages or ids) and whether it prefilled `<think>`."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            from r1kit.tokenizer import apply_chat_template

            prompt = apply_chat_template(self.tokenizer, prompt)
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False).input_ids, prompt_opens_think(prompt)
        ids = [int(i) for i in prompt]
        return ids, prompt_opens_think(self.tokenizer.decode(ids[-8:]))

    def add_request(self, prompt, params: SamplingParams) -> Request:
        ids, prefilled = self.encode(prompt)
        if not ids:
            raise R1kitError("empty prompt")
        if len(ids) >= self.max_seq_len:
            raise R1kitError(f"prompt has {len(ids)} tokens; the context window is {self.max_seq_len} tokens")
        req = Request(next(self._ids), ids, params, prefilled, make_generator(params.seed, self.device))
        self.waiting.append(req)
        return req

    def abort(self, req: Request) -> None:
        if req in self.waiting:
            self.waiting.remove(req)
        if not req.done:
            req.finish_reason = "abort"
        self._release(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- the loop ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Admit waiting requests, then decode one token for every running one. Returns the requests touched."""
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            owner = getattr(self.model, "_r1kit_cache_owner", None)
            if not self._cache_ready or owner is None or owner() is not self:
                # the first step, or another engine used the model's cache since (and may have resized it): what
                # the prompt cache kept in free rows is gone
                mtp = {"mtp": True} if self.speculative else {}  # the MTP depth's cache, for its drafts
                self.model.setup_cache(self.max_batch_size, self.max_seq_len, **mtp)  # no-op when the size fits
                if self._cuda_graphs:  # replayed graphs write into the caches in place: fixed addresses
                    for cache in self.model._attention_caches():
                        torch._dynamo.mark_static_address(cache)
                self._retained.clear()
                self.model._r1kit_cache_owner = weakref.ref(self)
            if not self._cache_ready:
                vocab = self.model.config.vocab_size if self.speculative else None
                self.rows = RowState.allocate(self.max_batch_size, self.device, vocab)
                self._cache_ready = True
            self._compact()
            with self._packed.active():  # bf16 on CPU: oneDNN-packed weights (models/linear.py)
                resumed = self._resume() if self.tools else []
                admitted = self._admit()
                decoding = sorted((r for r in self.running if r not in admitted and r not in resumed
                                   and not r.done and not r.paused),
                                  key=lambda r: r.row)  # rows 0..n-1 after _compact: the cache is sliced
                if decoding:
                    (self._decode_speculative if self.speculative else self._decode)(decoding)
        finally:
            if was_training:
                self.model.train()
        touched = resumed + admitted + decoding
        if self.tools:
            self._submit_tool_calls(touched)
        for req in touched:
            if req.done:
                self._release(req)
        return touched

    def _admit(self) -> list[Request]:
        """Take free rows for waiting requests, prefill their prompts and sample each one's first token.

        Prefix sharing: requests with the same prompt ids (a GRPO group, an evaluation problem's k samples) prefill
        it once, and the others copy its cache rows; a prompt still held by a running request is not prefilled
        again at all (its row and its last hidden state are reused). Each request then samples with its own
        generator, so its output is the one it would have had alone."""
        batch, keys = [], set()
        while self.waiting and self.free_rows:
            req = self.waiting.popleft()
            key = self._prefix_key(req)
            # a prompt another request prefills (or holds) is copied from it: no prompt-cache lookup
            req.row, req.cached = self._take_row(req.prompt_ids, lookup=key not in keys and key not in self._holders)
            keys.add(key)
            self.cached_tokens += req.cached
            batch.append(req)
        if not batch:
            return []
        dev = self.device
        groups: dict[object, list[Request]] = {}  # one group per distinct prompt (per request when not sharing)
        for req in batch:
            groups.setdefault(self._prefix_key(req), []).append(req)
        keys = list(groups)
        group_of = [keys.index(self._prefix_key(r)) for r in batch]  # (B,) request -> group
        hidden: dict[object, torch.Tensor] = {}  # (d,) the hidden state at each group's last prompt token
        fresh = []
        for key, reqs in groups.items():
            if key in self._holders:
                hidden[key] = self._prefix_hidden[key]
                self._copy_prompt(self._holders[key][0], reqs)
            else:
                fresh.append(reqs[0])
        self.running.extend(batch)
        if fresh:
            for req, h in zip(fresh, self._prefill(fresh)):
                key = self._prefix_key(req)
                hidden[key] = h
                self._copy_prompt(req, groups[key][1:])
                if self.share_prefixes:
                    self._prefix_hidden[key] = h
        if self.share_prefixes:
            for key, reqs in groups.items():
                self._holders.setdefault(key, []).extend(reqs)
        index = torch.tensor(group_of, device=dev)
        hidden_of = torch.stack([hidden[k] for k in keys])[index]  # (B, d)
        logits = self.model.lm_head(hidden_of)  # (B, V)
        rows = torch.tensor([r.row for r in batch], device=dev)  # (B,)
        sampling = SamplingTensors.from_params([r.params for r in batch], dev)
        tokens = self._sample_and_append(batch, logits, sampling)
        self.rows.token[rows] = tokens
        self.rows.pos[rows] = torch.tensor([len(r.prompt_ids) for r in batch], device=dev)
        self.rows.sampling[rows] = sampling
        if self.speculative:  # the first draft: the MTP depth at the last prompt position
            last = self.rows.pos[rows] - 1
            g = self.model.forward_mtp_cached(hidden_of[:, None], tokens[:, None], last[:, None],
                                              kv_len=max(len(r.prompt_ids) for r in batch), cache_rows=rows)
            self._propose(batch, rows, g[:, 0], sampling, spec.uniforms([r.generator for r in batch], 1, dev)[0])
        return batch

    def _prefill(self, batch: list[Request]) -> torch.Tensor:
        """Run the prompts of `batch` into their cache rows, each from its first token not in the row already
        (`cached`, the prompt cache); returns the hidden states at their last tokens (B, d)."""
        dev, B = self.device, len(batch)
        feeds = [r.prompt_ids[r.cached:] for r in batch]
        T = max(len(f) for f in feeds)
        ids = torch.tensor([f + [self.pad_id] * (T - len(f)) for f in feeds], device=dev)  # (B, T) right-padded
        offset = torch.tensor([r.cached for r in batch], device=dev)[:, None]  # (B, 1)
        top = max(r.cached for r in batch)
        rows = torch.tensor([r.row for r in batch], device=dev)  # (B,)
        last_index = torch.tensor([len(f) - 1 for f in feeds], device=dev)  # (B,)
        batch_index = torch.arange(B, device=dev)
        last_hidden = None  # (B, d) the hidden state at each prompt's last token
        for start in range(0, T, self.prefill_chunk):  # chunked prefill bounds attention memory on long prompts
            end = min(start + self.prefill_chunk, T)
            # padding past a row's end is written to slots no one attends to before they are overwritten
            pos = (offset + torch.arange(start, end, device=dev)).clamp(max=self.max_seq_len - 1)  # (B, T_chunk)
            kv_len = min(top + end, self.max_seq_len)
            h = self.model.forward_cached(ids[:, start:end], pos, kv_len=kv_len, cache_rows=rows)
            if self.speculative:  # fill the MTP depth's cache: position i sees h_i and token i + 1
                nxt = torch.cat([ids, ids[:, -1:]], dim=1)[:, start + 1:end + 1]  # the last one is redone later
                self.model.forward_mtp_cached(h, nxt, pos, kv_len=end, cache_rows=rows)
            here = (last_index >= start) & (last_index < end)  # (B,) feeds ending in this chunk
            at = h[batch_index, (last_index - start).clamp(0, end - start - 1)]  # (B, d)
            last_hidden = at if last_hidden is None else torch.where(here[:, None], at, last_hidden)
        return last_hidden

    def _take_row(self, prompt_ids: list[int], lookup: bool = True) -> tuple[int, int]:
        """A free row for a new prompt and how many of its leading tokens the row holds already (prompt cache).

        The hit is the longest prefix the prompt shares with a kept row (at most all but its last token: the
        prefill must produce the last token's hidden state). That row stays as it is when another row can take
        the request: the shared slots are copied into the lowest row keeping nothing, else into the row kept
        longest ago (least recently used), so several conversations stay cached at once."""
        if not self._retained:
            return self.free_rows.pop(0), 0
        source, hit = None, 0
        for row, kept in self._retained.items() if lookup else ():
            n = _common_prefix(kept, prompt_ids, len(prompt_ids) - 1)
            if n > hit:
                source, hit = row, n
        empty = [r for r in self.free_rows if r not in self._retained]
        row = empty[0] if empty else next(iter(self._retained))
        if hit and row != source:
            self.model.move_cache_row(source, row, hit)
            self._retained[source] = self._retained.pop(source)  # used just now: evicted last
        self.free_rows.remove(row)
        self._retained.pop(row, None)
        return row, hit

    def clear_prompt_cache(self) -> None:
        """Forget the K/V kept in free rows (after the model's weights change)."""
        self._retained.clear()

    def _prefix_key(self, req: Request) -> object:
        if not self.share_prefixes:
            return req.id
        if req._key is None:
            req._key = tuple(req.prompt_ids)
        return req._key

    def _copy_prompt(self, src: Request, dst: list[Request]) -> None:
        """Copy src's prompt slots into the rows of dst (requests with the same prompt)."""
        if dst:
            rows = torch.tensor([r.row for r in dst], device=self.device)
            self.model.copy_cache_rows(src.row, rows, len(src.prompt_ids))

    def _decode(self, reqs: list[Request]) -> None:
        """One token for each request, read from `self.rows`.

        `_compact` keeps running requests in rows 0..n-1, so the cache is read as a slice; only while a tool call
        holds a row below a decoding one are the rows gathered."""
        n = len(reqs)
        kv_len = max(len(r.prompt_ids) + len(r.out_ids) for r in reqs)  # from the host: no device sync
        if [r.row for r in reqs] == list(range(n)):
            rows = slice(0, n)
            if self.static_shapes:
                b, kv_len = _static_shape(n, kv_len, self.max_batch_size, self.max_seq_len)
                # padding rows attend everything and write only the last slot (see the module docstring)
                pos = torch.where(self.rows.index[:b] < n, self.rows.pos[:b], self.max_seq_len - 1)
                if self._cuda_graphs:  # the previous replay's outputs are consumed: its buffers may be reused
                    torch.compiler.cudagraph_mark_step_begin()
                logits = self._decode_logits_fn(self.rows.token[:b], pos, kv_len)[:n]
            else:
                logits = self._decode_logits_fn(self.rows.token[rows], self.rows.pos[rows], kv_len)
        else:  # rare (a paused row below): eager, so it never waits for a compile of its own
            rows = torch.tensor([r.row for r in reqs], device=self.device)
            logits = self._decode_logits(self.rows.token[rows], self.rows.pos[rows], kv_len, cache_rows=rows)
        tokens = self._sample_and_append(reqs, logits, self.rows.sampling[rows])
        self.rows.token[rows] = tokens
        self.rows.pos[rows] += 1

    def _decode_logits(self, tokens: torch.Tensor, pos: torch.Tensor, kv_len: int,
                       cache_rows: torch.Tensor | None = None) -> torch.Tensor:
        """The model part of a decode step: tokens (n,) at positions (n,) of `cache_rows` (None: rows 0..n-1) ->
        logits (n, V). What `compile=True` compiles (rows 0..n-1): fixed-rank shapes, no host sync."""
        h = self.model.forward_cached(tokens[:, None], pos[:, None], kv_len=kv_len, cache_rows=cache_rows)
        return self.model.lm_head(h[:, -1])

    def _sample_and_append(self, reqs: list[Request], logits: torch.Tensor,
                           sampling: SamplingTensors) -> torch.Tensor:
        """Sample one token per request, append it and apply the stop rules; returns the tokens (B,) on device."""
        tokens, logprobs = sample(logits, [r.params for r in reqs], [r.generator for r in reqs], sampling)
        host_tokens, host_logprobs = torch.stack([tokens.double(), logprobs.double()]).tolist()  # the one sync
        for req, tok, lp in zip(reqs, host_tokens, host_logprobs):
            self._append(req, int(tok), lp)
        return tokens

    def _decode_speculative(self, reqs: list[Request]) -> None:
        """Verify each row's draft and decode up to two tokens, in rows 0..n-1 (see generation/speculative.py)."""
        n, dev, r = len(reqs), self.device, self.rows
        kv_len = max(len(q.prompt_ids) + len(q.out_ids) for q in reqs) + 1  # the draft's slot included
        cache_pos = r.pos[:n, None] + torch.arange(2, device=dev)  # (n, 2) the last token and the draft
        h = self.model.forward_cached(torch.stack([r.token[:n], r.draft[:n]], dim=1), cache_pos, kv_len=kv_len)
        params = [q.params for q in reqs]
        sampling = r.sampling[:n]
        twice = torch.arange(n, device=dev).repeat_interleave(2)
        p, logp = policy_probs(self.model.lm_head(h).flatten(0, 1), [q for q in params for _ in range(2)],
                               sampling[twice])
        p, logp = p.view(n, 2, -1), logp.view(n, 2, -1)  # (n, 2, V): at the last token and at the draft
        u = spec.uniforms([q.generator for q in reqs], 4, dev)  # (4, n)
        first, accepted = spec.verify(p[:, 0], r.draft_probs[:n], r.draft[:n], u[0], u[1])
        second = draw(p[:, 1], u[2])  # kept only when the draft was
        lp = logp.gather(2, torch.stack([first, second], dim=1)[:, :, None]).squeeze(2)  # (n, 2)
        g = self.model.forward_mtp_cached(h, torch.stack([first, second], dim=1), cache_pos, kv_len=kv_len)
        self._propose(reqs, None, g[torch.arange(n, device=dev), accepted.long()], sampling, u[3])
        r.token[:n] = torch.where(accepted, second, first)
        r.pos[:n] += 1 + accepted.long()
        host = torch.stack([first.double(), second.double(), accepted.double(), lp[:, 0].double(),
                            lp[:, 1].double()]).tolist()  # the one sync
        for req, t1, t2, ok, lp1, lp2 in zip(reqs, *host):
            self.drafted += 1
            self._append(req, int(t1), lp1)
            if ok:
                self.accepted += 1
                if not req.done:
                    self._append(req, int(t2), lp2)

    def _propose(self, reqs: list[Request], rows: torch.Tensor | None, g: torch.Tensor, sampling: SamplingTensors,
                 u: torch.Tensor) -> None:
        """Draw each row's next draft from the MTP depth's state g (B, d); rows None: rows 0..B-1."""
        q, _ = policy_probs(self.model.lm_head(g), [r.params for r in reqs], sampling)
        rows = slice(0, len(reqs)) if rows is None else rows
        self.rows.draft[rows], self.rows.draft_probs[rows] = draw(q, u), q

    def _append(self, req: Request, tok: int, lp: float) -> None:
        """Append one sampled token to a request and apply the stop rules (host side)."""
        req.out_ids.append(tok)
        req.logprobs.append(lp)
        req.model_mask.append(True)
        if tok in self.eos_ids and not req.params.ignore_eos:
            req.finish_reason = "stop"
        else:
            checked = len(req.text)  # text before this token was searched for stop strings already
            self._detokenize(req)
            if req.params.stop and self._hit_stop(req, checked):
                req.finish_reason = "stop"
            elif self._room(req) <= 0:
                req.finish_reason = "length"
            elif self.tools and CODE_CLOSE in req.text[max(0, checked - len(CODE_CLOSE)):]:
                req.tool_code = code_of(req.text)  # the text ends a cell: pause for the tool
        if req.done and not req.cut_at_stop:
            ids = req.out_ids[:-1] if req.finish_reason == "stop" else req.out_ids  # drop the EOS
            req.text = self.tokenizer.decode(ids, skip_special_tokens=True)

    def _room(self, req: Request) -> int:
        """Tokens the request may still add (its own budget and the cache row's)."""
        return min(req.params.max_new_tokens - len(req.out_ids),
                   self.max_seq_len - len(req.prompt_ids) - len(req.out_ids))

    # ---- tool calls -------------------------------------------------------------------------------------------

    def _submit_tool_calls(self, reqs: list[Request]) -> None:
        """Start the cells that finished this step; they run while the other rows decode."""
        for req in reqs:
            if req.tool_code is not None and not req.done:
                if req.session is None:
                    req.session = PythonSession(self.tools)
                req.tool_future = self._tool_pool.submit(req.session.run, req.tool_code)
                req.tool_code = None

    def _resume(self) -> list[Request]:
        """Append finished tool outputs as tokens, run them into their rows and sample the next token; returns
        the requests it touched (a caller streaming text or waiting for `done` sees them as `step()`'s).

        When every running request waits on a tool and none waits for a row, wait a little for one call to
        finish (nothing else could run) instead of spinning; briefly, so a server admits new requests meanwhile."""
        pending = [r for r in self.running if r.tool_future is not None]
        if not pending:
            return []
        if all(r.paused for r in self.running) and not (self.waiting and self.free_rows):
            cf.wait([r.tool_future for r in pending], timeout=0.05, return_when=cf.FIRST_COMPLETED)
        ready = [r for r in pending if r.tool_future.done()]
        resumed, feeds = [], []
        for req in ready:
            call = req.tool_future.result()
            req.tool_future = None
            req.tool_calls.append(call)
            ids = self.tokenizer(render_output(call, req.text), add_special_tokens=False).input_ids
            last = len(req.prompt_ids) + len(req.out_ids) - 1  # the cell's last token is not in the cache yet
            feed = [req.out_ids[-1]]
            if len(ids) >= self._room(req):  # no room to answer after the output: stop here
                ids = ids[: max(0, self._room(req))]
                req.finish_reason = "length"
            req.out_ids += ids
            req.logprobs += [0.0] * len(ids)
            req.model_mask += [False] * len(ids)
            self._detokenize(req)
            if req.done:
                req.text = self.tokenizer.decode(req.out_ids, skip_special_tokens=True)
                continue
            resumed.append(req)
            feeds.append((feed + ids, last))
        if resumed:
            hidden = self._extend(resumed, feeds)
            rows = torch.tensor([r.row for r in resumed], device=self.device)
            sampling = self.rows.sampling[rows]
            tokens = self._sample_and_append(resumed, self.model.lm_head(hidden), sampling)
            self.rows.token[rows] = tokens
            self.rows.pos[rows] = torch.tensor([len(r.prompt_ids) + len(r.out_ids) - 1 for r in resumed],
                                               device=self.device)
        return ready  # touched this step: resumed with a new token, or finished (no room after the output)

    def _extend(self, reqs: list[Request], feeds: list[tuple[list[int], int]]) -> torch.Tensor:
        """Run each request's new tokens into its row from a start position; the hidden state at each last token.

        feeds: (token ids, position of the first) per request. Right-padded like a prefill: padding lands in
        slots past the row's end, which later tokens overwrite before anything attends to them."""
        dev, T = self.device, max(len(ids) for ids, _ in feeds)
        ids = torch.tensor([f + [self.pad_id] * (T - len(f)) for f, _ in feeds], device=dev)  # (B, T)
        start = torch.tensor([s for _, s in feeds], device=dev)
        pos = start[:, None] + torch.arange(T, device=dev)  # (B, T)
        pos = pos.clamp(max=self.max_seq_len - 1)  # padding past the row's end writes the last slot, unattended
        rows = torch.tensor([r.row for r in reqs], device=dev)
        kv_len = max(s + len(f) for f, s in feeds)
        h = self.model.forward_cached(ids, pos, kv_len=kv_len, cache_rows=rows)
        last = torch.tensor([len(f) - 1 for f, _ in feeds], device=dev)
        return h[torch.arange(len(reqs), device=dev), last]

    def _compact(self) -> None:
        """Move running requests into the lowest rows, so a decode step reads rows 0..n-1 of the cache as a slice.

        Otherwise, once requests finish at different times, every layer of every step would gather the running
        rows' whole K/V history (`cache[rows, :kv_len]`); a move copies one request's history once."""
        n = len(self.running)
        for req in sorted(self.running, key=lambda r: r.row, reverse=True):
            if req.row < n:
                break
            hole = self.free_rows.pop(0)  # sorted: the lowest free row, below n
            length = len(req.prompt_ids) + len(req.out_ids)
            kept = self._retained.pop(hole, None)
            if kept is None:
                self.model.move_cache_row(req.row, hole, length)
            else:  # the prompt cache: the hole's kept tokens go up into the row the request leaves
                self.model.swap_cache_rows(req.row, hole, max(length, len(kept)))
                self._retained[req.row] = kept
            self.rows.move(req.row, hole)
            self.free_rows.append(req.row)
            self.free_rows.sort()
            req.row = hole

    def _release(self, req: Request) -> None:
        if req.session is not None:  # the reply's interpreter goes with it (after a call still running)
            session, req.session = req.session, None
            if req.tool_future is not None:
                req.tool_future.add_done_callback(lambda _: session.close())
            else:
                session.close()
        req.tool_code = None
        if req in self.running:
            self.running.remove(req)
            key = self._prefix_key(req)
            if key in self._holders:
                self._holders[key].remove(req)
                if not self._holders[key]:  # no row holds this prompt any more
                    del self._holders[key], self._prefix_hidden[key]
        if req.row is not None:
            if self.prompt_cache and req.out_ids and not req.tool_calls:
                # every token but the last sampled one has been run into the row; the newest entry goes last
                written = len(req.prompt_ids) + len(req.out_ids) - 1
                self._retained[req.row] = (req.prompt_ids + req.out_ids)[:written]
            self.free_rows.append(req.row)
            self.free_rows.sort()
            req.row = None

    # ---- text -------------------------------------------------------------------------------------------------

    def _detokenize(self, req: Request) -> None:
        """Incremental detokenization: decode only a small window, emit text once it is complete UTF-8."""
        window = self.tokenizer.decode(req.out_ids[req._prefix:], skip_special_tokens=True)
        before = self.tokenizer.decode(req.out_ids[req._prefix:req._read], skip_special_tokens=True)
        if len(window) > len(before) and not window.endswith("\ufffd"):
            req.text += window[len(before):]
            req._prefix, req._read = req._read, len(req.out_ids)

    def _hit_stop(self, req: Request, checked: int) -> bool:
        """Cut the text at the first stop string that ends past its first `checked` characters (searched before).

        One token may add any number of characters: a match can start in earlier text or lie wholly inside the
        new ones; it starts no earlier than `checked - len(stop) + 1`."""
        longest = max(len(s) for s in req.params.stop)
        tail_start = max(0, checked - longest + 1)
        hits = [i for s in req.params.stop if (i := req.text.find(s, tail_start)) != -1]
        if hits:
            req.text = req.text[: min(hits)]
            req.cut_at_stop = True
            return True
        return False

    def visible_text(self, req: Request) -> str:
        """Text safe to stream now: holds back a tail that could still become a stop string."""
        if req.done or not req.params.stop:
            return req.text
        hold = max(len(s) for s in req.params.stop) - 1
        return req.text[: max(0, len(req.text) - hold)]

    # ---- conveniences -----------------------------------------------------------------------------------------

    def generate(self, prompts: list, params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        reqs = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        while any(not r.done for r in reqs):
            self.step()
        return [r.completion() for r in reqs]

    def stream(self, prompt, params: SamplingParams) -> Iterator[str]:
        """Yield text deltas of one request as they are decoded; closing the iterator aborts the request."""
        req = self.add_request(prompt, params)
        sent = 0
        try:
            while not req.done:
                self.step()
                text = self.visible_text(req)
                if len(text) > sent:
                    yield text[sent:]
                    sent = len(text)
            if len(req.text) > sent:
                yield req.text[sent:]
        finally:
            if not req.done:
                self.abort(req)
        self.last_completion = req.completion()


KV_BUCKET = 128  # static decode shapes: the attended cache length is rounded up to a multiple of this


def _static_shape(n: int, kv_len: int, max_batch: int, max_seq_len: int) -> tuple[int, int]:
    """(rows, cache length) of a static decode step for n running rows attending kv_len slots: the batch padded
    to the next power of two and the length to the next multiple of KV_BUCKET, each capped at the cache's size."""
    return min(1 << (n - 1).bit_length(), max_batch), min(-(-kv_len // KV_BUCKET) * KV_BUCKET, max_seq_len)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """The length of the longest common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
