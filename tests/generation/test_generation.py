"""The engine against transformers' `generate`, the model's own full forward, and sampling formulas."""

import math

import pytest
import torch
import transformers

import r1kit
from r1kit.errors import R1kitError
from r1kit.generation import Engine, SamplingParams, generate, split_reasoning
from r1kit.generation.sampling import argmax, sample
from r1kit.tokenizer import toy_tokenizer


@pytest.fixture(scope="module")
def smollm2():
    try:
        from r1kit.models.checkpoint import smollm2_gguf_path

        path = smollm2_gguf_path()
    except Exception as e:  # noqa: BLE001 (any reason the weights are missing skips)
        pytest.skip(str(e))
    ours = r1kit.load_model(path).eval()
    tok = r1kit.load_tokenizer(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    return ours, tok, ref


def hf_greedy(ref, ids: list[int], n: int) -> list[int]:
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                       pad_token_id=0, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def test_smollm2_greedy_matches_transformers_single_and_batch(smollm2):
    ours, tok, ref = smollm2
    prompts = [[{"role": "user", "content": q}] for q in
               ("What is 7 + 5?", "Write one sentence about the sea and the moon, please.", "Hi")]
    got = generate(ours, tok, prompts, max_new_tokens=64, temperature=0)  # one batch of different lengths
    single = generate(ours, tok, prompts[:1], max_new_tokens=64, temperature=0)[0]
    for prompt, completion in zip(prompts, got):
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        expected = hf_greedy(ref, ids, 64)
        n = len(completion.token_ids)  # ours stops at EOS; transformers was told to go on
        assert completion.token_ids == expected[:n]
        assert n == 64 or completion.token_ids[-1] in ours.config.eos_token_id
    assert single.token_ids == got[0].token_ids


def tiny_deepseek_pair(tmp_path):
    cfg = transformers.DeepseekV3Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, kv_lora_rank=16,
        q_lora_rank=24, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=2, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, max_position_embeddings=256, initializer_range=0.2,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                         "original_max_position_embeddings": 128, "mscale": 1.0, "mscale_all_dim": 1.0},
        bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    ref = transformers.DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        ref.model.layers[1].mlp.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.2)
    ref.save_pretrained(tmp_path)
    return r1kit.load_model(tmp_path).eval(), ref


def test_tiny_deepseek_greedy_matches_transformers(tmp_path):
    ours, ref = tiny_deepseek_pair(tmp_path)
    tok = toy_tokenizer()
    prompts = [[5, 17, 40, 33], [9, 12, 100, 54, 23, 77, 64, 3, 31], [44]]
    got = Engine(ours, tok, max_batch_size=3, max_seq_len=128).generate(
        prompts, SamplingParams(max_new_tokens=64, temperature=0, ignore_eos=True))
    for ids, completion in zip(prompts, got):
        assert completion.token_ids == hf_greedy(ref, ids, 64)


def test_logprobs_equal_full_forward():
    model = r1kit.load_model("toy-moe").eval()
    tok = toy_tokenizer()
    prompts = ["<bos>12+7=", "<bos>a much longer prompt here"]
    outs = generate(model, tok, prompts, max_new_tokens=20, temperature=1.0, seed=3)
    for prompt, c in zip(prompts, outs):
        ids = tok(prompt, add_special_tokens=False).input_ids
        full = torch.tensor([ids + c.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(full)[0], dim=-1)
        expected = logp[len(ids) - 1:-1].gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_greedy_logprobs_equal_full_forward():
    model = r1kit.load_model("toy-dense").eval()
    tok = toy_tokenizer()
    ids = tok("<bos>3+4=", add_special_tokens=False).input_ids
    c = generate(model, tok, [ids], max_new_tokens=12, temperature=0)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + c.token_ids]))[0], dim=-1)[len(ids) - 1:-1]
    assert c.token_ids == logp.argmax(-1)[: len(c.token_ids)].tolist()
    expected = logp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-5)


@pytest.mark.parametrize("vocab", [7, 2048, 49152, 151936, 5000])
def test_blockwise_argmax_is_torch_argmax_including_ties(vocab):
    x = torch.randn(9, vocab)
    x[1, [3, vocab - 1]] = 50.0  # ties: the first index wins
    x[2, vocab - 1] = 50.0  # max in the short last block
    x[3] = 0.0  # all tied
    x[4, [1500 % vocab, 1024 % vocab]] = 60.0  # ties across blocks
    assert torch.equal(argmax(x), torch.argmax(x, dim=-1))
    assert torch.equal(argmax(x.bfloat16().float()), torch.argmax(x.bfloat16().float(), dim=-1))


def test_seeded_sampling_is_reproducible_and_batch_independent():
    model = r1kit.load_model("toy-moe").eval()
    tok = toy_tokenizer()
    a = generate(model, tok, ["<bos>1+1=", "<bos>22"], max_new_tokens=16, temperature=1.0, seed=7)
    b = generate(model, tok, ["<bos>1+1=", "<bos>22"], max_new_tokens=16, temperature=1.0, seed=7)
    alone = generate(model, tok, ["<bos>22"], max_new_tokens=16, temperature=1.0, seed=8)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert a[1].token_ids == alone[0].token_ids


def _crafted_draws(params: SamplingParams, n: int = 4000) -> torch.Tensor:
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits = probs.log().expand(n, -1)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    tokens, _ = sample(logits, [params] * n, gens)
    return torch.bincount(tokens, minlength=6).float() / n


@pytest.mark.parametrize("params, allowed", [
    (SamplingParams(top_k=2), [0, 1]),
    (SamplingParams(top_p=0.7), [0, 1, 2]),  # cumulative 0.4, 0.65 < 0.7, then 0.8 covers it
    (SamplingParams(min_p=0.3), [0, 1, 2]),  # p >= 0.3 * 0.4 = 0.12
    (SamplingParams(top_p=0.95, top_k=4), [0, 1, 2, 3]),
])
def test_filters_only_sample_allowed_tokens_with_renormalized_mass(params, allowed):
    freq = _crafted_draws(params)
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    expected = torch.zeros(6)
    expected[allowed] = probs[allowed] / probs[allowed].sum()
    assert set(torch.nonzero(freq).flatten().tolist()) <= set(allowed)
    assert (freq - expected).abs().max() < 0.03  # 4000 draws: 3 sigma is about 0.023


def test_temperature_scales_the_distribution():
    freq = _crafted_draws(SamplingParams(temperature=0.5))
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]) ** 2
    assert (freq - probs / probs.sum()).abs().max() < 0.03


def test_stop_strings_and_finish_reasons():
    model = r1kit.load_model("toy-moe").eval()
    tok = toy_tokenizer()
    free = generate(model, tok, ["<bos>x"], max_new_tokens=30, temperature=1.0, seed=1)[0]
    assert free.finish_reason in ("length", "stop")
    if len(free.text) > 6:
        stop = free.text[3:5]
        cut = generate(model, tok, ["<bos>x"], max_new_tokens=30, temperature=1.0, seed=1, stop=[stop])[0]
        assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    short = generate(model, tok, ["<bos>x"], max_new_tokens=3, temperature=1.0, seed=1)[0]
    assert len(short.token_ids) <= 3


def test_prompt_longer_than_context_is_an_error():
    model = r1kit.load_model("toy-moe").eval()
    with pytest.raises(R1kitError, match="context window"):
        Engine(model, toy_tokenizer(), max_batch_size=1).add_request([5] * 2000, SamplingParams())


@pytest.mark.parametrize("text, prefilled, reasoning, answer", [
    ("a plan\n</think>\n42", True, "a plan", "42"),
    ("<think>plan</think> 42", False, "plan", "42"),
    ("still thinking when cut", True, "still thinking when cut", ""),
    ("<think>never closed", False, "never closed", ""),
    ("just 42", False, "", "just 42"),
    ("plan</think>42", False, "plan", "42"),
])
def test_reasoning_split(text, prefilled, reasoning, answer):
    assert split_reasoning(text, prefilled) == (reasoning, answer)


def test_streaming_concatenates_to_the_completion():
    model = r1kit.load_model("toy-moe").eval()
    engine = Engine(model, toy_tokenizer(), max_batch_size=2, max_seq_len=128)
    deltas = list(engine.stream("<bos>7+", SamplingParams(max_new_tokens=25, temperature=1.0, seed=5)))
    assert "".join(deltas) == engine.last_completion.text
    assert not math.isnan(sum(engine.last_completion.logprobs))


def test_continuous_batching_with_row_compaction_matches_solo_runs(monkeypatch):
    """7 requests through 3 rows, finishing at different steps: holes open below running rows, requests are
    moved down (their cache history copied), and every output still equals the same request decoded alone."""
    model = r1kit.load_model("toy-moe").eval()
    tok = toy_tokenizer()
    prompts = [[5, 17, 40], [9, 12, 50, 54, 23], [44], [7, 7, 8, 9], [60, 61], [3, 30, 33, 36, 39, 42], [11]]
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (3, 12, 5, 9, 2, 7, 4)]
    moves = []
    real_move = model.move_cache_row
    monkeypatch.setattr(model, "move_cache_row", lambda *a: (moves.append(a), real_move(*a)))
    together = Engine(model, tok, max_batch_size=3, max_seq_len=64).generate(prompts, params)
    assert moves  # compaction happened
    for prompt, sp, got in zip(prompts, params, together):
        [alone] = Engine(model, tok, max_batch_size=1, max_seq_len=64).generate([prompt], sp)
        assert got.token_ids == alone.token_ids and len(got.token_ids) == sp.max_new_tokens
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-5)
