"""Packed bf16 linears: same numbers as F.linear, refreshed when the weight changes, invisible to autograd."""

import pytest
import torch
import torch.nn.functional as F

import r1kit
from r1kit.generation import Engine, SamplingParams
from r1kit.models.linear import Linear, packed_weights, packing_supported
from r1kit.tokenizer import toy_tokenizer

pytestmark = pytest.mark.skipif(
    not packing_supported(Linear(2, 2, dtype=torch.bfloat16)), reason="this CPU's oneDNN has no bf16 kernels")


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    return x.abs().clamp(min=1e-3) * 2.0**-7  # bf16 keeps 8 significant bits


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (16, 1)])
def test_packed_matches_fp32_matmul_to_bf16_rounding(shape, bias):
    layer = Linear(96, 200, bias=bias).to(torch.bfloat16)
    x = torch.randn(*shape, 96).to(torch.bfloat16)
    reference = x.float() @ layer.weight.float().T + (layer.bias.float() if bias else 0)  # exact products, fp32 sum
    with torch.no_grad(), packed_weights(layer):
        assert layer.packed.active
        out = layer(x)
    assert out.shape == (*shape, 200) and out.dtype == torch.bfloat16
    assert ((out.float() - reference).abs() <= 2 * bf16_ulp(reference) + 1e-3).all()


def test_weight_changes_are_picked_up_and_autograd_is_untouched():
    layer = Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(4, 64).to(torch.bfloat16)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    with torch.no_grad(), packed_weights(layer):
        before = layer(x)
    packed = layer.packed
    assert not packed.active  # only inside the block

    loss = layer(x).float().square().mean()  # plain F.linear path: gradients flow
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    opt.step()  # in-place update bumps the version counters

    with torch.no_grad(), packed_weights(layer):
        after = layer(x)
    assert layer.packed is not packed  # re-packed
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    assert ((after.float() - expected).abs() <= 2 * bf16_ulp(expected) + 1e-3).all()
    assert (after - before).abs().max() > 0.1


def test_models_that_ran_packed_still_copy_and_pickle(tmp_path):
    import copy

    layer = Linear(16, 8).to(torch.bfloat16)
    x = torch.randn(2, 16).to(torch.bfloat16)
    with torch.no_grad(), packed_weights(layer):
        expected = layer(x)
    for clone in (copy.deepcopy(layer), torch.load(_saved(layer, tmp_path), weights_only=False)):
        assert clone.packed is None  # the cache is dropped, the weights are not
        with torch.no_grad(), packed_weights(clone):
            assert torch.equal(clone(x), expected)


def _saved(module, tmp_path):
    torch.save(module, tmp_path / "m.pt")
    return tmp_path / "m.pt"


def test_fp32_models_are_left_alone():
    layer = Linear(8, 8)
    with packed_weights(layer):
        assert layer.packed is None


@pytest.mark.parametrize("preset", ["toy-dense", "toy-moe"])
def test_bf16_engine_follows_the_full_forward_argmax(preset):
    """Greedy decoding on packed weights picks, at every step, the argmax of an unpacked full forward over the
    same tokens, except where the top two logits are closer than bf16 noise."""
    model = r1kit.load_model(preset, dtype=torch.bfloat16).eval()
    engine = Engine(model, toy_tokenizer(), max_batch_size=3, max_seq_len=96)
    prompts = [[5, 17, 40, 33], [9, 12, 50, 54, 23, 31], [44]]
    done = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True))
    checked = 0
    for ids, completion in zip(prompts, done):
        full = torch.tensor([ids + completion.token_ids])
        with torch.no_grad():
            logits = model(full)[0, len(ids) - 1: -1].float()  # (new, V): F.linear, no cache
        top2 = logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.05
        chosen = torch.tensor(completion.token_ids)
        assert (logits.argmax(-1)[clear] == chosen[clear]).all()
        checked += int(clear.sum())
    assert checked >= 20  # of 72 steps; random toy models have many near-ties


def test_fp32_model_with_bf16_matmuls():
    """Mixed precision (GRPO rollouts): an fp32 model's linears run on bf16 packed weights, outputs back in fp32."""
    layer = Linear(96, 64)
    x = torch.randn(5, 96)
    reference = x.bfloat16().float() @ layer.weight.bfloat16().float().T + layer.bias.bfloat16().float()
    with torch.no_grad(), packed_weights(layer, torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32
    assert ((out - reference).abs() <= 2 * bf16_ulp(reference) + 1e-3).all()  # bf16 operands, one bf16 rounding
    assert (out - F.linear(x, layer.weight, layer.bias)).abs().max() > 0  # it really ran in bf16


def test_mixed_precision_engine_logprobs_stay_close_to_fp32():
    model = r1kit.load_model("toy-dense").eval()
    tok = toy_tokenizer()
    ids = [5, 17, 40, 33, 9, 12]
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=64, matmul_dtype=torch.bfloat16)
    c = engine.generate([ids], SamplingParams(max_new_tokens=20, temperature=1.0, seed=0, ignore_eos=True))[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + c.token_ids]))[0, len(ids) - 1:-1], dim=-1)
    exact = logp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    diff = (torch.tensor(c.logprobs) - exact).abs()
    assert 0 < diff.max() < 0.05  # bf16 rounding, not a different policy
