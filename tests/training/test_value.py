"""PPO critic and clipped value loss against the formulas written out token by token in Python."""

import statistics

import pytest
import torch
import torch.nn.functional as F

import r1kit
from r1kit.training.value import ValueModel, value_loss

# [B=2, T=4]; row 1 has 2 real tokens (then padding with junk). Tokens (0,0), (1,0): v within c of old (both
# terms equal); (0,1), (0,2): v moved past the range, away from R (unclipped term larger); (0,3), (1,1): v
# moved past the range towards R (clipped term larger: no gradient).
VALUES = [[0.5, 1.4, -0.3, 2.0], [0.9, 0.0, 7.0, -7.0]]
OLD = [[0.4, 1.0, 0.1, 1.5], [1.0, 0.3, 0.0, 0.0]]
RETURNS = [[1.0, 0.0, 0.5, 3.0], [0.0, -1.0, 9.0, 9.0]]
MASK = [[1, 1, 1, 1], [1, 1, 0, 0]]
C = 0.2


def reference(values, old, returns, mask, c):
    """Loss, d loss / d values, clip fraction and explained variance, one token at a time."""
    toks = [(v, o, r) for vr, orow, rr, mr in zip(values, old, returns, mask)
            for v, o, r, m in zip(vr, orow, rr, mr) if m]
    n = len(toks)
    loss, grads, clipped = 0.0, [], 0
    for v, o, r in toks:
        vc = min(max(v, o - c), o + c)
        a, b = (v - r) ** 2, (vc - r) ** 2
        loss += 0.5 * max(a, b) / n
        if b > a:
            clipped += 1
            grads.append((vc - r) / n if o - c < v < o + c else 0.0)  # clip(v) is flat outside the range
        else:
            grads.append((v - r) / n)
    rs, vs = [r for _, _, r in toks], [v for v, _, _ in toks]
    ev = 1 - statistics.pvariance([r - v for r, v in zip(rs, vs)]) / statistics.pvariance(rs)
    return loss, grads, clipped / n, ev


def tensors(dtype=torch.float64):
    v = torch.tensor(VALUES, dtype=dtype, requires_grad=True)
    return v, torch.tensor(OLD, dtype=dtype), torch.tensor(RETURNS, dtype=dtype), torch.tensor(MASK)


def test_value_loss_matches_formula_and_its_gradient():
    v, old, ret, mask = tensors()
    loss, metrics = value_loss(v, old, ret, mask, C)
    ref_loss, ref_grads, ref_clip, ref_ev = reference(VALUES, OLD, RETURNS, MASK, C)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    (g,) = torch.autograd.grad(loss, v)
    assert g[mask.bool()].tolist() == pytest.approx(ref_grads, rel=1e-12, abs=1e-15)
    assert g[~mask.bool()].tolist() == [0.0, 0.0]
    assert 0 < ref_clip < 1 and metrics["value_clip_fraction"] == pytest.approx(ref_clip)
    assert metrics["explained_variance"] == pytest.approx(ref_ev, rel=1e-12)
    assert metrics["value_loss"] == pytest.approx(ref_loss, rel=1e-12)


def test_hand_computed_single_token():
    # v = 1.0, old = 0.5, R = 2.0, c = 0.2: clip(v) = 0.7; (v-R)^2 = 1.0, (0.7-R)^2 = 1.69 -> loss 0.845
    loss, metrics = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]),
                               torch.tensor([[1]]), 0.2)
    assert loss.item() == pytest.approx(0.845)
    assert metrics["value_clip_fraction"] == 1.0


def test_no_clip_is_half_mse_and_perfect_critic_explains_all():
    v, old, ret, mask = tensors()
    loss, metrics = value_loss(v, old, ret, mask, None)
    m = mask.bool()
    assert loss.item() == pytest.approx(0.5 * F.mse_loss(v[m], ret[m]).item(), rel=1e-12)
    assert metrics["value_clip_fraction"] == 0.0
    _, perfect = value_loss(ret.clone(), old, ret, mask, C)
    assert perfect["explained_variance"] == pytest.approx(1.0)


def test_value_model_is_backbone_hidden_times_head():
    torch.manual_seed(0)
    critic = ValueModel.from_source("toy-moe", seed=3)
    ids = torch.randint(3, 128, (2, 6))
    attn = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert critic(ids, attention_mask=attn).tolist() == [[0.0] * 6] * 2  # zero-initialised head
    assert isinstance(critic.backbone.lm_head, torch.nn.Identity) and len(critic.backbone.mtp) == 0

    with torch.no_grad():
        critic.value_head.weight.normal_()
        critic.value_head.bias.fill_(0.25)
    plain = r1kit.load_model("toy-moe", seed=3)  # the same backbone weights, loaded independently
    h = plain.hidden(ids, attention_mask=attn)  # [B, T, d]
    want = h @ critic.value_head.weight[0] + 0.25
    got = critic(ids, attention_mask=attn)
    assert got.shape == (2, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got, want.detach())

    loss, _ = value_loss(got, torch.zeros(2, 6), torch.ones(2, 6), attn, 0.2)
    loss.backward()
    assert critic.backbone.layers[0].self_attn.q_a_proj.weight.grad.abs().sum() > 0


def test_value_model_keeps_tied_embedding():
    critic = ValueModel(r1kit.load_model("toy-dense"))
    assert critic.backbone.lm_head.weight is critic.backbone.embed_tokens.weight


def test_shape_mismatch_raises():
    v, old, ret, mask = tensors()
    with pytest.raises(ValueError):
        value_loss(v, old[:, :3], ret, mask, C)
