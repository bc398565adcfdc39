"""The vLLM backend: conversions checked by hand everywhere; with vLLM installed, parity with r1kit's Engine."""

import importlib.util
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch

import r1kit
from r1kit.errors import ConfigError, R1kitError
from r1kit.generation import Engine, SamplingParams
from r1kit.generation.vllm_backend import VLLMEngine, hf_named_weights, to_completion, vllm_sampling_kwargs
from r1kit.models.config import get_preset
from r1kit.models.transformer import Transformer
from r1kit.tokenizer import toy_tokenizer

HAS_VLLM = importlib.util.find_spec("vllm") is not None

# ---- pure: run everywhere -----------------------------------------------------------------------------------------


def test_sampling_params_map_field_for_field():
    sp = SamplingParams(max_new_tokens=7, temperature=0.6, top_p=0.95, min_p=0.05, seed=3, stop="\n\n",
                        ignore_eos=True)
    assert vllm_sampling_kwargs(sp) == {
        "max_tokens": 7, "temperature": 0.6, "top_p": 0.95, "top_k": -1, "min_p": 0.05, "seed": 3,
        "stop": ["\n\n"], "ignore_eos": True, "logprobs": 0, "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }
    kw = vllm_sampling_kwargs(SamplingParams(temperature=0, top_k=20), max_tokens=5)
    assert (kw["temperature"], kw["top_k"], kw["max_tokens"], kw["seed"], kw["stop"]) == (0, 20, 5, None, [])


def _lp(x):
    return SimpleNamespace(logprob=x, rank=1, decoded_token="")


def _output(text, token_ids, logprobs, finish_reason, prompt=(1, 5, 9)):
    sample = SimpleNamespace(text=text, token_ids=tuple(token_ids), logprobs=logprobs, finish_reason=finish_reason)
    return SimpleNamespace(prompt_token_ids=list(prompt), outputs=[sample])


def test_request_output_becomes_completion():
    # the second step's sampled token (40) was not the top one, so vLLM also reports the top token (41)
    steps = [{30: _lp(-0.25)}, {41: _lp(-0.1), 40: _lp(-2.5)}, {2: _lp(-0.75)}]
    c = to_completion(_output("<think>\nsum</think>\n 42", [30, 40, 2], steps, "stop"))
    assert (c.reasoning, c.answer, c.text) == ("sum", "42", "<think>\nsum</think>\n 42")
    assert c.token_ids == [30, 40, 2] and c.logprobs == [-0.25, -2.5, -0.75]
    assert (c.finish_reason, c.prompt_tokens) == ("stop", 3)
    # a prefilled <think>: the reply only closes the block; truncated inside it, everything is reasoning
    c = to_completion(_output("a\n</think>b", [7, 8], [{7: _lp(-1.0)}, {8: _lp(-2.0)}], "stop"), prefilled_think=True)
    assert (c.reasoning, c.answer) == ("a", "b")
    c = to_completion(_output("still thinking", [7], [{7: _lp(-1.0)}], "length"), prefilled_think=True)
    assert (c.reasoning, c.answer, c.finish_reason) == ("still thinking", "", "length")
    c = to_completion(_output("plain", [7], [{7: _lp(-1.0)}], "stop"))
    assert (c.reasoning, c.answer) == ("", "plain")


def test_bad_request_outputs_are_named():
    with pytest.raises(R1kitError, match="'error'"):
        to_completion(_output("x", [7], [{7: _lp(-1.0)}], "error"))
    with pytest.raises(R1kitError, match="logprobs=0"):
        to_completion(_output("x", [7], None, "stop"))


def test_named_weights_split_experts_into_the_layout_the_loader_reads(tmp_path):
    """The per-expert names vLLM's DeepSeek loader reads are the official V3 layout, which load_model reads back."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Transformer(get_preset("toy-moe").replace(n_mtp_layers=0)).eval()
    weights = dict(hf_named_weights(model))
    cfg = model.config
    fused = model.state_dict()["layers.1.mlp.experts.gate_up_proj"]  # [E, 2I, d]
    for j in (0, cfg.n_routed_experts - 1):
        gate = weights[f"model.layers.1.mlp.experts.{j}.gate_proj.weight"]
        up = weights[f"model.layers.1.mlp.experts.{j}.up_proj.weight"]
        assert gate.shape == up.shape == (cfg.moe_inter_dim, cfg.dim)
        assert torch.equal(gate, fused[j, : cfg.moe_inter_dim]) and torch.equal(up, fused[j, cfg.moe_inter_dim:])
        assert weights[f"model.layers.1.mlp.experts.{j}.down_proj.weight"].shape == (cfg.dim, cfg.moe_inter_dim)
    assert not any(n.endswith(("experts.gate_up_proj", "experts.down_proj")) for n in weights)
    d = r1kit.save_model(model, tmp_path / "ckpt")
    for f in d.glob("*.safetensors"):
        f.unlink()
    save_file({k: v.contiguous() for k, v in weights.items()}, d / "model.safetensors")
    back = r1kit.load_model(d)
    for name, t in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name


def test_named_weights_skip_tied_head_and_mtp():
    dense = r1kit.load_model("toy-dense")
    names = dict(hf_named_weights(dense))
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    moe = r1kit.load_model("toy-moe")  # one MTP layer: model.layers.4.* in a saved checkpoint
    assert not any(n.startswith(f"model.layers.{moe.config.n_layers}.") for n in dict(hf_named_weights(moe)))


def test_missing_vllm_and_unknown_options_are_clear(monkeypatch):
    with pytest.raises(ConfigError, match="gpu_mem"):
        VLLMEngine("unused", toy_tokenizer(), gpu_mem=0.5)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        VLLMEngine("unused", toy_tokenizer(), gpu_memory_utilization=1.5)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(R1kitError, match=r"pip install 'r1kit\[vllm\]'"):
        VLLMEngine("unused", toy_tokenizer())


# ---- with vLLM installed: the same model through both engines -----------------------------------------------------

needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed")
PROMPTS = [[1, 10, 20, 30, 40], "<bos><|user|>Hi<|assistant|>", [{"role": "user", "content": "What is 2+2?"}]]


def tiny_qwen2(seed: int) -> Transformer:
    """A dense Qwen2 model; head_dim 32 (vLLM's CPU attention kernels take multiples of 16/32), weights spread
    (std 0.2) so greedy choices are not near-ties."""
    cfg = get_preset("toy-dense").replace(dim=128, n_heads=4, n_kv_heads=2, head_dim=0, max_seq_len=256)
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """r1kit's model and a VLLMEngine over its saved checkpoint. The checkpoint's EOS ids are the tokenizer's <eos>
    and a character the first prompt's greedy reply emits at its 6th step, so stopping at EOS is exercised."""
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes a share of RAM
    tok = toy_tokenizer()
    model = tiny_qwen2(seed=0)
    [probe] = Engine(model, tok, max_batch_size=1).generate(
        PROMPTS[:1], SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True))
    model.config.eos_token_id = [tok.eos_token_id, probe.token_ids[5]]
    path = r1kit.save_model(model, tmp_path_factory.mktemp("vllm") / "tiny-qwen2", tokenizer=tok)
    engine = VLLMEngine(path, r1kit.load_tokenizer(path), dtype="float32", max_model_len=256, enforce_eager=True,
                        gpu_memory_utilization=0.3)
    return model, tok, engine


def assert_same(got, expected, tol=1e-4):
    assert got.token_ids == expected.token_ids
    assert (got.text, got.reasoning, got.answer) == (expected.text, expected.reasoning, expected.answer)
    assert (got.finish_reason, got.prompt_tokens) == (expected.finish_reason, expected.prompt_tokens)
    assert max(abs(a - b) for a, b in zip(got.logprobs, expected.logprobs)) <= tol


@needs_vllm
def test_vllm_greedy_equals_engine_token_for_token(pair):
    model, tok, engine = pair
    sp = SamplingParams(max_new_tokens=24, temperature=0)
    expected = Engine(model, tok, max_batch_size=3).generate(PROMPTS, sp)
    got = engine.generate(PROMPTS, sp)
    assert expected[0].finish_reason == "stop" and len(expected[0].token_ids) == 6  # the EOS planted above
    for g, e in zip(got, expected):
        assert_same(g, e)
    # a stop string taken from the middle of a reply; and a context window that runs out
    stop = expected[1].text[3:5]
    sp = SamplingParams(max_new_tokens=24, temperature=0, stop=[stop], ignore_eos=True)
    assert_same(engine.generate(PROMPTS[1:2], sp)[0], Engine(model, tok).generate(PROMPTS[1:2], sp)[0])
    long_prompt = [5 + i % 90 for i in range(250)]
    sp = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    got = engine.generate([long_prompt], sp)[0]
    assert_same(got, Engine(model, tok, max_seq_len=256).generate([long_prompt], sp)[0])
    assert got.finish_reason == "length" and len(got.token_ids) == 6


@needs_vllm
def test_vllm_logprobs_are_the_temperature_scaled_policy(pair):
    """Sampled at T=0.7: each log-prob equals log_softmax(logits / 0.7) of a full forward over prompt + reply."""
    model, _, engine = pair
    prompt = [1, 10, 20, 30, 40]
    [c] = engine.generate([prompt], SamplingParams(max_new_tokens=16, temperature=0.7, seed=11, ignore_eos=True))
    [again] = engine.generate([prompt], SamplingParams(max_new_tokens=16, temperature=0.7, seed=11, ignore_eos=True))
    assert c.token_ids == again.token_ids  # a seeded request is reproducible
    with torch.no_grad():
        logits = model(torch.tensor([prompt + c.token_ids]))[0, len(prompt) - 1:-1]
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    assert max(abs(a - b) for a, b in zip(c.logprobs, expected.tolist())) <= 1e-4


@needs_vllm
def test_vllm_top_p_logprobs_are_renormalized_over_kept_tokens(pair):
    """The documented difference: with top-p, vLLM reports log p(token) - log(mass of the kept tokens)."""
    model, _, engine = pair
    prompt = [1, 50, 60]
    [c] = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.6, seed=5,
                                                   ignore_eos=True))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + c.token_ids]))[0, len(prompt) - 1:-1]
    for step, (tok_id, got) in enumerate(zip(c.token_ids, c.logprobs)):
        probs = torch.softmax(logits[step].double(), dim=-1)
        ranked = probs.sort(descending=True).values
        kept = ranked[(ranked.cumsum(0) - ranked) < 0.6].sum().item()  # smallest top set with mass >= 0.6
        assert got == pytest.approx(math.log(probs[tok_id].item()) - math.log(kept), abs=1e-4)


@needs_vllm
def test_vllm_update_weights_pushes_the_trainers_weights(pair):
    model, tok, engine = pair
    other = tiny_qwen2(seed=1)
    other.config.eos_token_id = list(model.config.eos_token_id)
    sp = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    before = engine.generate(PROMPTS[:1], sp)[0]
    try:
        engine.update_weights(other)
        after = engine.generate(PROMPTS[:1], sp)[0]
        assert after.token_ids != before.token_ids
        assert_same(after, Engine(other, tok).generate(PROMPTS[:1], sp)[0])
    finally:
        engine.update_weights(model)
    assert engine.generate(PROMPTS[:1], sp)[0].token_ids == before.token_ids


@needs_vllm
def test_public_generate_dispatches_to_vllm(pair):
    model, tok, engine = pair
    prompts = PROMPTS[1:]
    got = r1kit.generate(engine, None, prompts, max_new_tokens=16, temperature=0)
    expected = r1kit.generate(model, tok, prompts, max_new_tokens=16, temperature=0)
    for g, e in zip(got, expected):
        assert_same(g, e)


def test_cli_backend_vllm_without_vllm_is_a_one_line_error(monkeypatch, capsys):
    from r1kit.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)
    code = main(["generate", "--model", "some/hf-dir", "--prompt", "hi", "--backend", "vllm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "vllm" in err.lower()
