"""The prompt cache: a free row keeps its last request's K/V and a new prompt starting with those tokens prefills
only the rest. Every output must equal the same request decoded alone by an engine without the cache."""

import pytest
import torch

import r1kit
from r1kit.errors import R1kitError
from r1kit.generation import Engine, SamplingParams
from r1kit.tokenizer import toy_tokenizer

BASE = [1, 5, 17, 40, 33, 21, 9, 12]


def alone(model, tok, prompt, params):
    [c] = Engine(model, tok, max_batch_size=1, max_seq_len=96).generate([prompt], params)
    return c


def assert_same(got, want):
    assert got.token_ids == want.token_ids
    assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-5)


@pytest.mark.parametrize("preset", ["toy-moe", "toy-dense"])
def test_a_prompt_extending_a_finished_request_prefills_only_its_new_tokens(monkeypatch, preset, device):
    model = r1kit.load_model(preset).eval().to(device)
    tok = toy_tokenizer()
    engine = Engine(model, tok, max_batch_size=2, max_seq_len=96, prompt_cache=True)
    first_pos = []  # the first cache position each admission's prefill writes
    real_forward = model.forward_cached

    def spy(input_ids, cache_pos, *, kv_len, cache_rows=None):
        if len(first_pos) < calls[0]:
            first_pos.append(int(cache_pos[0, 0]))
        return real_forward(input_ids, cache_pos, kv_len=kv_len, cache_rows=cache_rows)

    monkeypatch.setattr(model, "forward_cached", spy)
    calls = [0]
    params = SamplingParams(max_new_tokens=6, temperature=0.8, seed=3, ignore_eos=True)

    def run(prompt):
        calls[0] += 1
        [c] = engine.generate([prompt], params)
        return c

    p1 = BASE + [7, 8]
    c1 = run(p1)
    p2 = p1 + c1.token_ids + [4, 6]  # the next turn of a conversation: the whole first exchange is in the row
    c2 = run(p2)
    p3 = BASE + [3]  # shares the 8 tokens of BASE with the last request
    c3 = run(p3)
    p4 = [44, 2]  # shares nothing: takes the row that keeps nothing
    c4 = run(p4)
    p5 = BASE[:3] + [9]  # shares 3 tokens with p3's row (p4's row shares none)
    c5 = run(p5)
    c6 = run(p5)  # the same prompt again: all but its last token come from the row
    monkeypatch.undo()
    expected_hits = [0, len(p1) + len(c1.token_ids) - 1, 8, 0, 3, len(p5) - 1]
    assert [c.cached_tokens for c in (c1, c2, c3, c4, c5, c6)] == expected_hits
    assert first_pos == expected_hits  # the prefill really started after the kept tokens
    assert engine.cached_tokens == sum(expected_hits)
    for prompt, got in zip((p1, p2, p3, p4, p5, p5), (c1, c2, c3, c4, c5, c6)):
        assert_same(got, alone(model, tok, prompt, params))
    engine.clear_prompt_cache()
    assert run(p5).cached_tokens == 0


@pytest.mark.parametrize("preset", ["toy-moe", "toy-dense"])
def test_concurrent_requests_reuse_rows_through_compaction_and_match_solo_runs(preset, device):
    """More requests than rows, finishing at different times: rows are reused, running requests are moved down
    over kept rows (which must then be forgotten), prefix sharing copies rows of prompts prefilled from a kept
    prefix; every output still equals its solo run."""
    model = r1kit.load_model(preset).eval().to(device)
    tok = toy_tokenizer()
    prompts = [BASE + [7], BASE + [8, 2], [44, 3], BASE + [7], BASE[:5] + [11], [44, 3, 9], BASE + [8, 2, 5],
               BASE, BASE + [7]]
    params = [SamplingParams(max_new_tokens=2 + (i * 5) % 9, temperature=[1.0, 0.7, 0][i % 3], top_p=0.9,
                             seed=50 + i, ignore_eos=True) for i in range(len(prompts))]
    engine = Engine(model, tok, max_batch_size=3, max_seq_len=96, prompt_cache=True)
    together = engine.generate(prompts, params)
    assert engine.cached_tokens > 0
    # a second round over the same engine: the rows now keep the first round's tokens
    again = engine.generate(prompts, params)
    assert sum(c.cached_tokens for c in again) > sum(c.cached_tokens for c in together)
    for prompt, sp, got, got_again in zip(prompts, params, together, again):
        want = alone(model, tok, prompt, sp)
        assert_same(got, want)
        assert_same(got_again, want)
    # those solo engines wrote into the model's cache: the engine forgets what its rows kept
    [c] = engine.generate([prompts[0]], params[0])
    assert c.cached_tokens == 0
    assert_same(c, together[0])


def test_prompt_cache_refuses_speculative_decoding():
    model = r1kit.load_model("toy-moe").eval()
    with pytest.raises(R1kitError, match="prompt_cache and speculative"):
        Engine(model, toy_tokenizer(), speculative="mtp", prompt_cache=True)
