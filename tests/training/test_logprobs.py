"""Fused chunked log-probs/entropy against the plain unchunked computation (full logits, F.log_softmax).

Gradients are checked against autograd of the plain computation and, in float64, against finite differences
(torch.autograd.gradcheck), so the hand-written backward is tested against two independent references.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import r1kit
from r1kit.training.logprobs import completion_logprobs, fused_logprobs, model_logprobs

N, D, V = 37, 16, 50


def plain(h, w, targets, temperature):
    """The unchunked reference: the full [N, V] logits, log_softmax, gather; entropy = -sum p log p."""
    logits = F.linear(h, w).to(torch.promote_types(h.dtype, torch.float32)) / temperature  # [N, V]
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def inputs(dtype=torch.float32, seed=0, n=N, d=D, v=V):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).mul(0.5).to(dtype).requires_grad_()
    w = torch.randn(v, d, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)  # weights of logp and entropy in the loss
    return h, w, targets, a, b


def grads(fn, h, w, targets, a, b, temperature):
    logp, entropy = fn(h, w, targets, temperature)
    loss = (a * logp).sum() + (b * entropy).sum()
    gh, gw = torch.autograd.grad(loss, (h, w))
    return logp.detach(), entropy.detach(), gh, gw


def fused(chunk):
    def fn(h, w, t, temp):
        return fused_logprobs(h, w, t, temperature=temp, chunk_tokens=chunk, with_entropy=True)
    return fn


def assert_close_scaled(x, y, tol):
    """|x - y| <= tol * max|y| elementwise: rounding error relative to the tensor's scale."""
    assert x.dtype == y.dtype and x.shape == y.shape
    err, scale = (x - y).abs().max().item(), max(y.abs().max().item(), 1.0)
    assert err <= tol * scale, f"max error {err} > {tol} * {scale}"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 8, 36, 37, 100])  # N = 37
def test_values_and_grads_match_unchunked(dtype, tol, temperature, chunk):
    h, w, t, a, b = inputs(dtype)
    a, b = a.to(dtype), b.to(dtype)
    want = grads(plain, h, w, t, a, b, temperature)  # logp, entropy, grad_h, grad_W
    got = grads(fused(chunk), h, w, t, a, b, temperature)
    for x, y in zip(got, want):
        assert_close_scaled(x, y, tol)


def test_float64_gradcheck_both_outputs():
    h, w, t, _, _ = inputs(torch.float64, n=7, d=4, v=9)
    def f(h, w):
        return fused_logprobs(h, w, t, temperature=0.8, chunk_tokens=3, with_entropy=True)
    assert torch.autograd.gradcheck(f, (h, w))


@pytest.mark.parametrize("use", ["logp", "entropy"])
def test_one_output_alone(use):
    h, w, t, a, _ = inputs(torch.float64)
    logp, entropy = fused_logprobs(h, w, t, temperature=1.3, chunk_tokens=5, with_entropy=True)
    ref_logp, ref_entropy = plain(h, w, t, 1.3)
    got = torch.autograd.grad((a * (logp if use == "logp" else entropy)).sum(), (h, w))
    want = torch.autograd.grad((a * (ref_logp if use == "logp" else ref_entropy)).sum(), (h, w))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_entropy_gradient_formula_by_hand():
    """dH/dz = -p (log p + H), written out for one row of logits (h = identity, so z = W row-wise)."""
    z = torch.tensor([[0.3, -1.2, 2.0, 0.5]], dtype=torch.float64)  # [1, V=4]
    h = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)  # [1, d=3]
    w = torch.cat([z.t(), torch.zeros(4, 2, dtype=torch.float64)], dim=1).requires_grad_()  # h @ W^T = z
    _, entropy = fused_logprobs(h, w, torch.tensor([0]), with_entropy=True)
    (gw,) = torch.autograd.grad(entropy.sum(), (w,))
    p = torch.softmax(z[0], -1)
    H = -(p * p.log()).sum()
    assert entropy.item() == pytest.approx(H.item(), rel=1e-12)
    torch.testing.assert_close(gw[:, 0], -p * (p.log() + H))  # dH/dW[v, 0] = dH/dz_v * h_0, h_0 = 1


def test_bf16_inputs_loose():
    h, w, t, a, b = inputs(torch.bfloat16, n=45, d=32, v=64)
    want = grads(plain, h, w, t, a, b, 0.9)
    got = grads(fused(16), h, w, t, a, b, 0.9)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.bfloat16
    for x, y in zip(got, want):
        torch.testing.assert_close(x.float(), y.float(), rtol=2e-2, atol=2e-2)


def test_leading_dims_and_no_entropy():
    h, w, t, _, _ = inputs()
    logp, entropy = fused_logprobs(h[:36].view(4, 9, D), w, t[:36].view(4, 9), chunk_tokens=5)
    assert entropy is None and logp.shape == (4, 9)
    torch.testing.assert_close(logp.flatten(), plain(h[:36], w, t[:36], 1.0)[0])


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("chunk,fn", [(16, "fused"), (None, "plain")])
def test_no_full_logits_in_forward_or_backward(chunk, fn):
    """The largest tensor made in forward + backward is one chunk of logits, never [N, V]."""
    h, w, t, a, b = inputs(n=64, d=8, v=500)  # N * V = 32000 >> every other tensor
    probe = _LargestTensor()
    with probe:
        grads(fused(chunk) if fn == "fused" else plain, h, w, t, a, b, 1.0)
    if fn == "fused":
        assert probe.largest == chunk * 500
    else:  # the probe does see the full logits of the plain computation
        assert probe.largest == 64 * 500


def test_autocast_matches_lm_head_under_autocast():
    h, w, t, a, _ = inputs(n=20, d=32, v=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = fused_logprobs(h, w, t, chunk_tokens=6)
        logits = F.linear(h, w)  # what lm_head gives under autocast: bf16
    ref = F.log_softmax(logits.float(), -1).gather(-1, t[:, None]).squeeze(-1)
    torch.testing.assert_close(logp, ref, rtol=1e-5, atol=1e-5)
    assert torch.autograd.grad((a * logp).sum(), w)[0].dtype == torch.float32


@pytest.mark.parametrize("preset", ["toy-dense", "toy-moe"])  # tied embeddings / untied head
def test_model_logprobs_match_full_logits_and_param_grads(preset):
    torch.manual_seed(0)
    model = r1kit.load_model(preset)
    B, P, C = 2, 3, 5
    ids = torch.randint(3, 128, (B, P + C))
    attn = torch.ones(B, P + C, dtype=torch.long)
    attn[0, 0] = 0  # a left-padded prompt
    logp, entropy = completion_logprobs(model, ids, attn, P, temperature=0.6, chunk_tokens=3,
                                        with_entropy=True)
    (logp.sum() + entropy.sum()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    logits = model(ids, attention_mask=attn)[:, P - 1:-1].float() / 0.6  # [B, C, V]
    logp_all = F.log_softmax(logits, -1)
    ref = logp_all.gather(-1, ids[:, P:, None]).squeeze(-1)
    ref_entropy = -(logp_all.exp() * logp_all).sum(-1)
    (ref.sum() + ref_entropy.sum()).backward()
    torch.testing.assert_close(logp.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.detach(), ref_entropy.detach(), rtol=1e-5, atol=1e-5)
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and "embed_tokens.weight" in got
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    h = model.hidden(ids, attention_mask=attn)[:, P - 1:-1]
    torch.testing.assert_close(model_logprobs(model, h, ids[:, P:], temperature=0.6)[0], logp)


def test_bad_input_raises():
    h, w, t, _, _ = inputs()
    with pytest.raises(ValueError):
        fused_logprobs(h, w, t[:-1])
    with pytest.raises(ValueError):
        fused_logprobs(h, w[:, :-1], t)
    with pytest.raises(ValueError):
        fused_logprobs(h, w, t, temperature=0.0)


@pytest.mark.parametrize("preset", ["toy-moe", "toy-dense"])
def test_packed_completion_logprobs_equal_the_padded_forward(preset):
    """Packing the real tokens (no padding computed) gives the padded batch's log-probs, entropies and gradients
    on every completion token: positions restart per sequence and attention stays within it."""
    import r1kit
    from r1kit.training.grpo import pack
    from r1kit.training.logprobs import completion_logprobs

    model = r1kit.load_model(preset, seed=0).train()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 100, (n,), generator=g).tolist() for n in (5, 9, 3, 7, 4)]
    completions = [torch.randint(3, 100, (n,), generator=g).tolist() for n in (6, 1, 12, 4, 9)]
    ids, attn, cmask, P = pack(prompts, completions, 0)
    results = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        logp, entropy = completion_logprobs(model, ids, attn, P, temperature=0.7, with_entropy=True, packed=packed)
        ((logp * cmask).sum() + 0.1 * (entropy * cmask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logp * cmask, entropy * cmask, grads))
    (lp0, h0, g0), (lp1, h1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=2e-5, rtol=0)
    torch.testing.assert_close(h1, h0, atol=2e-5, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=2e-5, rtol=1e-4, msg=name)
    assert (lp1[cmask == 0] == 0).all()  # padded completion slots are zeros, not garbage
