"""From text and chat rows to training batches: token ids, loss masks, packing and collation.

A `Sample` is one document (pretraining) or one conversation (SFT) as token ids plus a target mask:
`mask[t] = 1` when token t is trained on, i.e. when the model is scored on predicting ids[t] from ids[:t].

SFT masks: the conversation is rendered with the tokenizer's chat template; the prompt is the rendering of
every message before the final assistant turn followed by the generation prompt. The tokens of the full
rendering past the prompt (reasoning, `</think>`, answer, EOS) are the targets; everything else (system and
user turns, role markers, the prefilled `<think>`) is masked. When the final turn does not begin with the
generation prompt (an assistant turn without reasoning under an R1-style template that prefills `<think>`),
the targets start where the two renderings' token ids first differ. A template that ignores the `reasoning`
field (ChatML, Llama 3: SmolLM2, Qwen2.5 instruct models) would drop the reasoning from the target, so the
final turn's reasoning is then written into its content as `<think>\nR\n</think>\nA`, the reply format
`r1kit.reasoning` reads.

Packing concatenates whole samples into rows of at most `seq_len` tokens (first fit, in order). Every token
carries its sample's `segment_id` (1, 2, ...; 0 for padding) and a `position` that restarts at 0 per sample;
the model attends only within a segment, so a packed row computes exactly what separate rows would.

Left out: splitting long documents across rows (a sample longer than `seq_len` is truncated on the right),
training on earlier assistant turns of a multi-turn chat, and varlen flash-attention kernels (the model
builds a block-diagonal mask).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import torch

from r1kit.errors import R1kitError


@dataclass
class Sample:
    ids: list[int]
    mask: list[int]  # 1: ids[t] is a target


@dataclass
class Batch:
    """input_ids, loss_mask, positions, segment_ids, attention_mask: (B, T). segment_ids is None for unpacked
    rows (one sample each, right-padded): their attention_mask marks the real tokens, so padding never
    attends, is never a target and is not counted by MoE balancing."""

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    positions: torch.Tensor
    segment_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None = None

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments that tell the model how rows are laid out (`model.hidden(ids, **...)`)."""
        if self.segment_ids is not None:
            return {"positions": self.positions, "segment_ids": self.segment_ids}
        return {} if self.attention_mask is None else {"attention_mask": self.attention_mask}

    def target_mask(self, shift: int = 1) -> torch.Tensor:
        """(B, T-shift) bool: position i is scored on predicting token i+shift (a target of the same sample)."""
        keep = self.loss_mask[:, shift:].bool()
        if self.segment_ids is not None:  # unpacked: a row is one sample and padding is never a target
            keep = keep & (self.segment_ids[:, shift:] == self.segment_ids[:, :-shift])
        return keep


def _token_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def text_sample(tokenizer, text: str) -> Sample:
    """A pretraining document: BOS + text + EOS, every token after BOS a target."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = bos + _token_ids(tokenizer, text) + eos
    return Sample(ids, [0] * len(bos) + [1] * (len(ids) - len(bos)))


def reasoning_inline(tokenizer, messages: list[dict]) -> list[dict]:
    """`messages` with the final turn's reasoning in its content when the chat template does not render it."""
    from r1kit.reasoning import THINK_CLOSE, THINK_OPEN
    from r1kit.tokenizer import apply_chat_template

    last = messages[-1]
    reasoning = last.get("reasoning")
    if not reasoning or reasoning in apply_chat_template(tokenizer, messages, add_generation_prompt=False):
        return messages
    inline = {k: v for k, v in last.items() if k != "reasoning"}
    inline["content"] = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n{last['content']}"
    return [*messages[:-1], inline]


def chat_sample(tokenizer, messages: list[dict]) -> Sample:
    """A conversation whose final assistant turn is the target (see the module docstring)."""
    from r1kit.tokenizer import apply_chat_template

    if not messages or messages[-1].get("role") != "assistant":
        raise R1kitError("an SFT conversation must end with an assistant message")
    messages = reasoning_inline(tokenizer, messages)
    text = apply_chat_template(tokenizer, messages, add_generation_prompt=False)
    full = _token_ids(tokenizer, text)
    prompt = _token_ids(tokenizer, apply_chat_template(tokenizer, messages[:-1], add_generation_prompt=True))
    start = 0
    while start < min(len(full), len(prompt)) and full[start] == prompt[start]:
        start += 1
    if start >= len(full):
        raise R1kitError("the final assistant turn renders to no tokens")
    mask = [0] * start + [1] * (len(full) - start)
    return Sample(full, _mask_tool_output(tokenizer, text, full, mask))


def _mask_tool_output(tokenizer, text: str, ids: list[int], mask: list[int]) -> list[int]:
    """Zero the targets of tokens inside tool output blocks (`<interpreter>...</interpreter>`)."""
    from r1kit.tools.python import OUTPUT_OPEN, tool_output_spans

    if OUTPUT_OPEN not in text:
        return mask
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc.input_ids) != ids:
        raise R1kitError("internal: the tokenizer's offsets do not match the sample's tokens")
    spans = tool_output_spans(text)
    return [0 if any(a < end and b > start for start, end in spans) else m
            for m, (a, b) in zip(mask, enc.offset_mapping)]


def truncate(samples: list[Sample], seq_len: int) -> list[Sample]:
    """Cut samples to seq_len tokens (right side) and drop those left without a target token."""
    out = [Sample(s.ids[:seq_len], s.mask[:seq_len]) for s in samples]
    return [s for s in out if any(s.mask[1:])]


def pack_groups(lengths: list[int], seq_len: int) -> list[list[int]]:
    """First-fit grouping of sample indices (in order) into rows whose total length is at most seq_len."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > seq_len:
            raise R1kitError(f"sample {i} has {n} tokens, more than seq_len={seq_len}; truncate first")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len - n)
    return rows


def make_rows(samples: list[Sample], seq_len: int, packing: bool, seed: int) -> list[list[Sample]]:
    """The rows of one epoch layout: samples shuffled once by `seed`, then packed (or one per row)."""
    order = list(range(len(samples)))
    random.Random(f"rows/{seed}").shuffle(order)
    shuffled = [samples[i] for i in order]
    if not packing:
        return [[s] for s in shuffled]
    return [[shuffled[i] for i in group] for group in pack_groups([len(s.ids) for s in shuffled], seq_len)]


def collate(rows: list[list[Sample]], pad_id: int, packed: bool) -> Batch:
    """Right-padded (B, T) tensors, T = the longest row. `packed` adds segment ids (needed when a row may
    hold several samples)."""
    T = max(sum(len(s.ids) for s in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.zeros(B, T, dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for k, s in enumerate(row, start=1):
            n = len(s.ids)
            ids[b, t:t + n] = torch.tensor(s.ids)
            mask[b, t:t + n] = torch.tensor(s.mask)
            pos[b, t:t + n] = torch.arange(n)
            seg[b, t:t + n] = k
            t += n
        pos[b, t:] = torch.arange(T - t) + (len(row[-1].ids) if row else 0)  # padding continues the last sample
    if not packed and any(len(row) > 1 for row in rows):
        raise R1kitError("collate: rows hold several samples but packed=False")
    return Batch(ids, mask, pos, seg if packed else None, None if packed else (seg > 0).long())


def step_rows(rows: list[list[Sample]], step: int, rows_per_step: int, seed: int) -> list[list[Sample]]:
    """The rows of optimizer step `step` (1-based): epochs visit every row once, each epoch in its own order
    drawn from (seed, epoch), so the data of a step is a pure function of (seed, step) and resumes exactly."""
    n = len(rows)
    out = []
    for i in range((step - 1) * rows_per_step, step * rows_per_step):
        epoch, j = divmod(i, n)
        out.append(rows[_epoch_order(n, seed, epoch)[j]])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"epoch/{seed}/{epoch}").shuffle(order)
    return tuple(order)


__all__ = ["Batch", "Sample", "chat_sample", "collate", "make_rows", "pack_groups", "step_rows", "text_sample",
           "truncate"]
