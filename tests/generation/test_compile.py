"""`Engine(compile=True)`: the compiled decode step samples exactly what the eager one does."""

import pytest
import torch

import r1kit
from r1kit.generation import Engine, SamplingParams


# compiles with inductor: ~30 s for the dense toy on 2 CPU cores, longer for the MoE (its experts break the graph)
@pytest.mark.parametrize("preset,quantize,static", [
    ("toy-dense", None, False), pytest.param("toy-moe", None, False, marks=pytest.mark.slow),
    pytest.param("toy-dense", "int4", False, marks=pytest.mark.slow),
    pytest.param("toy-dense", None, True, marks=pytest.mark.slow)])  # the padded shapes CUDA graphs replay
def test_compiled_decode_step_gives_the_eager_tokens(preset, quantize, static):
    torch.manual_seed(0)
    model = r1kit.load_model(preset, seed=0, quantize=quantize).eval()
    tok = r1kit.load_tokenizer(preset)
    # different prompt and reply lengths: rows finish at different steps, so the compiled step sees several
    # batch sizes and cache lengths (one dynamic-shape graph must serve them all)
    prompts = ["What is 2+2?", "How many a in banana? Think it through.", "Hi"]
    params = [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True) for n in (24, 9, 16)]
    eager = Engine(model, tok, max_batch_size=4).generate(prompts, params)
    compiled = Engine(model, tok, max_batch_size=4, compile=True, static_shapes=static).generate(prompts, params)
    for a, b in zip(eager, compiled):
        assert b.token_ids == a.token_ids
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_compile_with_packed_bf16_weights_is_refused_by_name():
    from r1kit.errors import R1kitError
    from r1kit.models.linear import packing_supported

    model = r1kit.load_model("toy-dense", seed=0).eval()
    tok = r1kit.load_tokenizer("toy-dense")
    if packing_supported(model, torch.bfloat16):  # inductor cannot lower oneDNN's packed linear
        with pytest.raises(R1kitError, match="bf16 matmuls"):
            Engine(model, tok, matmul_dtype=torch.bfloat16, compile=True)
    else:  # no packing on this CPU: the bf16 matmuls are plain ones, which compile
        Engine(model, tok, matmul_dtype=torch.bfloat16, compile=True)
