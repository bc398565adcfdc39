"""Speculative decoding with the MTP head: greedy output is plain greedy output; sampled output has exactly the
plain sampler's distribution (checked against probabilities computed with the full forward)."""

import pytest
import torch

import r1kit
from r1kit.errors import R1kitError
from r1kit.generation import Engine, SamplingParams
from r1kit.generation.sampling import SamplingTensors, policy_probs
from r1kit.generation.speculative import verify
from r1kit.tokenizer import toy_tokenizer


def test_greedy_speculative_output_is_plain_greedy_output(device):
    """Several rows, prompts of different lengths, chunked prefill, shared prefixes and row compaction: the tokens
    and log-probs are those of plain decoding, and some drafts are kept."""
    torch.manual_seed(0)
    model = r1kit.load_model("toy-moe").eval().to(device)
    tok = toy_tokenizer()
    prompts = [[1, 5, 17, 40, 33], [1, 9, 12, 50, 54, 23, 77, 64, 3, 31], [1, 44], [1, 5, 17, 40, 33], [1, 7]]
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (30, 17, 24, 9, 30)]
    plain = Engine(model, tok, max_batch_size=3, max_seq_len=64).generate(prompts, params)
    engine = Engine(model, tok, max_batch_size=3, max_seq_len=64, prefill_chunk=4, speculative="mtp")
    fast = engine.generate(prompts, params)
    for a, b, sp in zip(plain, fast, params):
        assert b.token_ids == a.token_ids and len(b.token_ids) == sp.max_new_tokens
        assert torch.allclose(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-4)
    assert engine.drafted > 0 and 0 < engine.accepted <= engine.drafted


def test_speculative_needs_an_mtp_head():
    with pytest.raises(R1kitError, match="MTP"):
        Engine(r1kit.load_model("toy-dense"), toy_tokenizer(), speculative="mtp")


def test_verify_keeps_the_target_distribution():
    """The rejection rule alone, exactly: P(token) = q(t) min(1, p/q) + (1 - accepted mass) residual(t) = p(t)."""
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.1, 0.1, 0.4, 0.4])
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    draft = torch.multinomial(q, n, replacement=True, generator=gen)
    tokens, accepted = verify(p.expand(n, -1), q.expand(n, -1), draft, torch.rand(n, generator=gen),
                              torch.rand(n, generator=gen))
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert torch.allclose(freq, p, atol=0.006)
    assert abs(accepted.float().mean().item() - torch.minimum(p, q).sum().item()) < 0.006


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0, top_k=3),
                                    SamplingParams(temperature=0.7, top_p=0.9, top_k=5)], ids=["top3", "t0.7-p0.9-top5"])
def test_sampled_speculative_tokens_have_the_plain_distribution(params, device):
    """The first 3 tokens of many seeded requests (t1 sampled after the prefill, t2 the first verified MTP draft,
    t3 the bonus token when the draft was kept, else the next step's) against P(t1, t2, t3) from plain full
    forwards with the same temperature and filters: a chi-square test over the cells with >= 5 expected samples,
    the rest pooled."""
    torch.manual_seed(0)
    model = r1kit.load_model("toy-moe").eval().to(device)
    tok = toy_tokenizer()
    prompt, n = [1, 5, 17, 40, 33], 2000
    engine = Engine(model, tok, max_batch_size=n, max_seq_len=16, speculative="mtp")
    sp = [SamplingParams(max_new_tokens=3, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                         seed=s, ignore_eos=True) for s in range(n)]
    outs = engine.generate([prompt] * n, sp)  # one shared prefill; t1 sampled at admission, t2 drafted by MTP
    assert engine.accepted > 50 and engine.drafted - engine.accepted > 50  # both branches are exercised

    def dist(ids):
        with torch.no_grad():
            logits = model(torch.tensor([ids], device=device))[0, -1:]
        return policy_probs(logits, [params], SamplingTensors.from_params([params], device))[0][0].cpu()

    joint = {}  # P(t1, t2, t3) on the cells the samples reached, from plain full forwards
    p1 = dist(prompt)
    for a in {c.token_ids[0] for c in outs}:
        p2 = dist(prompt + [a])
        for b in torch.nonzero(p2 > 1e-3).flatten().tolist():
            p3 = dist(prompt + [a, b])
            for c in torch.nonzero(p3 > 1e-3).flatten().tolist():
                joint[(a, b, c)] = (p1[a] * p2[b] * p3[c]).item()
    counts = {}
    for c in outs:
        counts[tuple(c.token_ids)] = counts.get(tuple(c.token_ids), 0) + 1
    assert sum(counts.get(k, 0) for k in joint) > 0.97 * n  # nearly every sample lies in an expected cell
    cells = [k for k, v in joint.items() if v * n >= 5]  # chi-square needs expected counts >= 5
    rest_p = 1 - sum(joint[k] for k in cells)
    rest_n = n - sum(counts.get(k, 0) for k in cells)
    expected = [joint[k] * n for k in cells] + [rest_p * n]
    observed = [counts.get(k, 0) for k in cells] + [rest_n]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    df = len(cells)
    assert chi2 < df + 4 * (2 * df) ** 0.5 + 10, (chi2, df)  # far beyond the 99.9% quantile of chi2(df)
