"""Static decode shapes (`Engine(static_shapes=True)`, what CUDA graphs replay): the decode batch is padded to a
power of two and the attended cache length rounded up to a multiple of 128. Padding must change nothing: every
output equals the same request decoded alone by a plain engine."""

import pytest
import torch

import r1kit
from r1kit.generation import Engine, SamplingParams
from r1kit.generation.engine import _static_shape
from r1kit.tokenizer import toy_tokenizer


def test_static_shape_buckets():
    # (n rows, kv_len) -> (next power of two, next multiple of 128), capped at the cache's rows and slots
    assert _static_shape(1, 1, 16, 1024) == (1, 128)
    assert _static_shape(3, 128, 16, 1024) == (4, 128)
    assert _static_shape(5, 129, 16, 1024) == (8, 256)
    assert _static_shape(9, 1000, 12, 1000) == (12, 1000)
    assert _static_shape(16, 300, 16, 300) == (16, 300)


def alone(model, tok, prompt, params):
    [c] = Engine(model, tok, max_batch_size=1, max_seq_len=200).generate([prompt], params)
    return c


@pytest.mark.parametrize("preset", ["toy-dense", "toy-moe"])
def test_padded_decode_steps_match_solo_runs(monkeypatch, preset, device):
    """Requests finishing at different steps (batch sizes 5 down to 1 over 8 rows, a long prompt crossing the
    128-slot bucket), with the prompt cache on: padding rows write their scratch slot in free rows that keep
    earlier requests' K/V, and a second round reuses those rows."""
    model = r1kit.load_model(preset).eval().to(device)
    tok = toy_tokenizer()
    long_prompt = [1] + [5 + (i * 7) % 90 for i in range(120)]
    prompts = [[1, 5, 17, 40], [1, 5, 17, 40, 8], long_prompt, [44, 3], [1, 9, 9, 2, 11, 30]]
    params = [SamplingParams(max_new_tokens=n, temperature=t, top_p=0.9, seed=7 + i, ignore_eos=True)
              for i, (n, t) in enumerate([(6, 1.0), (17, 0.7), (25, 0.0), (3, 1.0), (11, 0.8)])]
    engine = Engine(model, tok, max_batch_size=8, max_seq_len=200, prompt_cache=True, static_shapes=True)
    shapes = []
    real = engine._decode_logits

    def spy(tokens, pos, kv_len, cache_rows=None):
        shapes.append((tokens.shape[0], kv_len))
        return real(tokens, pos, kv_len, cache_rows)

    monkeypatch.setattr(engine, "_decode_logits_fn", spy)
    first = engine.generate(prompts, params)
    second = engine.generate(prompts, params)  # over rows that keep the first round's tokens
    monkeypatch.undo()
    assert sum(c.cached_tokens for c in second) > 0
    assert {b for b, _ in shapes} == {8, 4, 2, 1} and {kv for _, kv in shapes} == {128, 200}
    for prompt, sp, a, b in zip(prompts, params, first, second):
        want = alone(model, tok, prompt, sp)
        for got in (a, b):
            assert got.token_ids == want.token_ids
            assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-5)


def test_static_shapes_default_only_with_compile_on_cuda():
    model = r1kit.load_model("toy-dense").eval()
    tok = toy_tokenizer()
    assert not Engine(model, tok).static_shapes
    assert not Engine(model, tok, compile=True).static_shapes  # on the CPU a compiled step keeps exact shapes
    assert Engine(model, tok, static_shapes=True).static_shapes
