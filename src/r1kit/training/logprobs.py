"""Per-token log-probs and entropy fused with the output projection, chunked over tokens.

The idea of Liger-Kernel's fused linear cross-entropy, written in plain PyTorch (runs on CPU and GPU): the
logits of N tokens over a vocabulary of V are an [N, V] tensor -- 1.6 GB in float32 for 8K tokens of a
49K vocabulary, three times that with the log-softmax and its gradient -- while what RL needs per token is
two numbers, log p(target) and the entropy. `fused_logprobs` computes them `chunk_tokens` rows at a time
from the final hidden states h [N, d] and the head weight W [V, d]; its backward recomputes each chunk's
logits and accumulates grad_h (per chunk) and grad_W (summed over chunks). Extra memory is O(N d + V d +
chunk V), never O(N V), in the forward and in the backward.

For a row of logits z = (h W^T) / T with p = softmax(z), H = -sum_v p_v log p_v, the backward uses
    d log p_t / dz = onehot(t) - p
    d H / dz       = -p * (log p + H)
and the chain rule through 1/T and the matmul. Softmax math is float32 (or float64 for float64 inputs);
the matmuls run in the inputs' dtype, as `lm_head` would (under autocast, in the autocast dtype).

Left out: a bias on the head (r1kit heads have none), ignore-index targets (mask the result instead), a
Triton kernel (the chunk's [chunk, V] logits still go through memory), and FSDP: the head weight is read
directly, outside `lm_head.forward`, so under FSDP2 it must be unsharded by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _FusedLinearLogProbs(torch.autograd.Function):
    """(h [N, d], W [V, d], targets [N]) -> (logp [N], entropy [N] or [0]); see the module docstring."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_tokens: int,
                with_entropy: bool) -> tuple[Tensor, Tensor]:
        acc = torch.promote_types(h.dtype, torch.float32)  # softmax dtype
        N = h.size(0)
        logp = torch.empty(N, dtype=acc, device=h.device)
        lse = torch.empty(N, dtype=acc, device=h.device)
        entropy = torch.empty(N if with_entropy else 0, dtype=acc, device=h.device)
        for s in range(0, N, chunk_tokens):
            e = min(s + chunk_tokens, N)
            z = F.linear(h[s:e], weight).to(acc).div_(temperature)  # [n, V]
            lse[s:e] = torch.logsumexp(z, dim=-1)
            logp[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lse[s:e]
            if with_entropy:  # H = -sum_v p_v log p_v
                z.sub_(lse[s:e, None])  # [n, V]: now log p, in place
                entropy[s:e] = -z.exp().mul_(z).sum(-1)
            del z  # free this chunk's logits before the next chunk's are made
        ctx.save_for_backward(h, weight, targets, lse, entropy)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.set_materialize_grads(False)  # an unused output sends None: its term is skipped
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp: Tensor | None, g_entropy: Tensor | None):
        h, weight, targets, lse, entropy = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk_tokens
        if g_entropy is not None and g_entropy.numel() == 0:
            g_entropy = None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_logp is None and g_entropy is None) or not (need_h or need_w):
            return None, None, None, None, None, None
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None  # accumulated in W's dtype (as Liger does)
        N = h.size(0)
        for s in range(0, N, chunk):
            e = min(s + chunk, N)
            logp = F.linear(h[s:e], weight).to(lse.dtype).div_(T).sub_(lse[s:e, None])  # [n, V] log p
            p = logp.exp()  # [n, V]
            if g_entropy is None:  # dz = -g_logp * p (+ g_logp at the target, below)
                gz = p.mul_(-g_logp[s:e, None])
            else:  # dz = -p * (g_logp + g_H * (log p + H))
                logp.add_(entropy[s:e, None]).mul_(g_entropy[s:e, None])  # in place: no new [n, V] buffer
                if g_logp is not None:
                    logp.add_(g_logp[s:e, None])
                gz = p.mul_(logp).neg_()
            if g_logp is not None:
                gz.scatter_add_(-1, targets[s:e, None], g_logp[s:e, None].to(gz.dtype))
            gz = gz.div_(T).to(h.dtype)  # [n, V] gradient of the matmul's output
            if need_h:
                grad_h[s:e] = gz @ weight  # [n, d]
            if need_w:
                grad_w.addmm_(gz.t(), h[s:e])  # [V, d]
            del logp, p, gz  # free this chunk's buffers before the next chunk's are made
        return grad_h, grad_w, None, None, None, None


def fused_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log softmax((hidden @ weight^T) / temperature)[targets], and the entropy, without [N, V] logits.

    Args:
        hidden: [..., d] final-normed hidden states (the input of the output head).
        weight: [V, d] output-head weight (`model.lm_head.weight`, tied or not).
        targets: [...] int64 token ids in [0, V), the same leading shape as `hidden`.
        temperature: > 0; the logits are divided by it before the softmax.
        chunk_tokens: rows per chunk; the extra memory is about 3 [chunk_tokens, V] float32 blocks.
        with_entropy: also return the entropy (nats) of softmax(logits / temperature) per token.

    Returns:
        (logps, entropy): float32 tensors (float64 for float64 inputs) of shape `targets.shape`; entropy is
        None unless `with_entropy`. Both are differentiable w.r.t. `hidden` and `weight`; detach the entropy
        when it is only a metric. Under autocast, the matmuls run in the autocast dtype, as `lm_head` would.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match targets {tuple(targets.shape)}")
    if weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"weight must be [V, {hidden.size(-1)}], got {tuple(weight.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    h = hidden.reshape(-1, hidden.size(-1)).to(dtype)  # [N, d]
    with torch.autocast(device_type, enabled=False):
        logps, entropy = _FusedLinearLogProbs.apply(
            h, weight.to(dtype), targets.reshape(-1).long(), float(temperature), int(chunk_tokens),
            with_entropy,
        )
    return logps.view(targets.shape), (entropy.view(targets.shape) if with_entropy else None)


def head_weight(model: nn.Module) -> Tensor:
    """The [V, d] output-head weight of an r1kit Transformer: `lm_head.weight` (the embedding if tied)."""
    head = model.lm_head
    if getattr(head, "bias", None) is not None:
        raise ValueError("fused log-probs support a head without bias only")
    return head.weight


def model_logprobs(
    model: nn.Module,
    hidden: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """`fused_logprobs` through `model`'s head: the log-probs `model.lm_head(hidden)` would give, fused.

    hidden: [B, C, d] the output of `model.hidden(...)` (final-normed, i.e. *not* `output_pre_norm=True`),
    already sliced to the positions that predict `targets` [B, C] (position i predicts token i + 1).
    """
    return fused_logprobs(hidden, head_weight(model), targets, temperature=temperature,
                          chunk_tokens=chunk_tokens, with_entropy=with_entropy)


def completion_logprobs(
    model: nn.Module,
    ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
    packed: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs [B, C] (and entropy) of the completion tokens ids[:, prompt_len:] of a left-padded prompt.

    ids, attention_mask: [B, P + C] (prompt left-padded to P = prompt_len, completion right-padded);
    the same contract as `grpo.completion_logps`, with the [B, C, V] logits never built.

    packed: run the real tokens only. Each sequence (its prompt and completion, without padding) is packed
    first-fit into rows no longer than the longest one, with positions restarting per sequence and attention
    kept within it (segment ids), so the values equal the padded forward's while no layer computes on padding;
    the head then runs on the completion tokens only. Padded completion positions are 0 in the result.
    """
    if not packed:
        h = model.hidden(ids, attention_mask=attention_mask)  # [B, P+C, d]
        return model_logprobs(model, h[:, prompt_len - 1:-1], ids[:, prompt_len:], temperature=temperature,
                              chunk_tokens=chunk_tokens, with_entropy=with_entropy)
    from r1kit.training.packing import pack_groups

    B, T = ids.shape
    C, dev = T - prompt_len, ids.device
    real = attention_mask.bool()
    prompt_lens = real[:, :prompt_len].sum(1).tolist()  # one host sync: the layout is built on the host
    comp_lens = real[:, prompt_len:].sum(1).tolist()
    lengths = [p + c for p, c in zip(prompt_lens, comp_lens)]
    L = max(lengths)
    src, dst, pos, seg = [], [], [], []  # per packed token: where it comes from, where it goes, position, segment
    pred, target, out = [], [], []  # per completion token: the packed slot predicting it, its id slot, (b, c) slot
    for r, members in enumerate(pack_groups(lengths, L)):
        offset = 0
        for k, b in enumerate(members):
            start, n, p = prompt_len - prompt_lens[b], lengths[b], prompt_lens[b]
            src += range(b * T + start, b * T + start + n)
            dst += range(r * L + offset, r * L + offset + n)
            pos += range(n)
            seg += [k + 1] * n
            c = comp_lens[b]
            pred += range(r * L + offset + p - 1, r * L + offset + p - 1 + c)
            target += range(b * T + prompt_len, b * T + prompt_len + c)
            out += range(b * C, b * C + c)
            offset += n
    R = r + 1
    as_index = lambda x: torch.tensor(x, dtype=torch.long, device=dev)
    dst_i = as_index(dst)
    packed_ids = torch.zeros(R * L, dtype=ids.dtype, device=dev).index_put_((dst_i,), ids.reshape(-1)[as_index(src)])
    positions = torch.zeros(R * L, dtype=torch.long, device=dev).index_put_((dst_i,), as_index(pos))
    segments = torch.zeros(R * L, dtype=torch.long, device=dev).index_put_((dst_i,), as_index(seg))
    h = model.hidden(packed_ids.view(R, L), positions=positions.view(R, L), segment_ids=segments.view(R, L))
    h = h.reshape(R * L, -1)[as_index(pred)]  # [N, d]: only the states that predict a completion token
    logp, entropy = model_logprobs(model, h, ids.reshape(-1)[as_index(target)], temperature=temperature,
                                   chunk_tokens=chunk_tokens, with_entropy=with_entropy)
    out_i = as_index(out)

    def scatter(values: Tensor) -> Tensor:
        return torch.zeros(B * C, dtype=values.dtype, device=dev).index_put((out_i,), values).view(B, C)

    return scatter(logp), None if entropy is None else scatter(entropy)
