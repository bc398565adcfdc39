"""Model behaviour against formulas and against the model's own full-sequence path computed independently."""

import json
import math

import pytest
import torch

import r1kit
from r1kit.errors import CheckpointError, ConfigError
from r1kit.models.config import ModelConfig, get_preset
from r1kit.models.moe import MoE
from r1kit.models.params import count_params
from r1kit.models.rope import inverse_frequencies


def test_671b_parameter_counts_match_design():
    counts = count_params(get_preset("deepseek-v3-671b"))
    assert counts["total"] == 671_026_419_200
    assert counts["active"] == 37_552_297_472
    assert round(counts["mtp"] / 1e9, 2) == 11.61


@pytest.mark.parametrize("preset", ["toy-moe", "toy-dense"])
def test_cached_decoding_equals_full_forward(preset):
    """Absorbed MLA / GQA cache, prefilled in two chunks then decoded token by token, against the naive forward."""
    model = r1kit.load_model(preset).eval()
    ids = torch.randint(3, 100, (2, 20))
    with torch.no_grad():
        ref = model(ids)
        model.setup_cache(2, 64)
        pos = torch.arange(20).expand(2, 20)
        h1 = model.forward_cached(ids[:, :8], pos[:, :8], kv_len=8)
        h2 = model.forward_cached(ids[:, 8:15], pos[:, 8:15], kv_len=15)
        steps = [model.forward_cached(ids[:, t:t + 1], pos[:, t:t + 1], kv_len=t + 1) for t in range(15, 20)]
        got = model.lm_head(torch.cat([h1, h2, *steps], dim=1))
    assert (got - ref).abs().max().item() < 1e-4


def test_cache_rows_select_batch_slots():
    model = r1kit.load_model("toy-moe").eval()
    ids = torch.randint(3, 100, (1, 6))
    with torch.no_grad():
        ref = model(ids)[:, -1]
        model.setup_cache(4, 32)
        rows = torch.tensor([2])
        model.forward_cached(ids[:, :5], torch.arange(5)[None], kv_len=5, cache_rows=rows)
        got = model.lm_head(model.forward_cached(ids[:, 5:], torch.tensor([[5]]), kv_len=6, cache_rows=rows))[:, -1]
    assert (got - ref).abs().max().item() < 1e-4


def test_packed_segments_match_separate_sequences():
    model = r1kit.load_model("toy-moe").eval()
    a, b = torch.randint(3, 100, (1, 7)), torch.randint(3, 100, (1, 5))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[0] * 7 + [1] * 5])
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        got = model(packed, positions=pos, segment_ids=seg)
        ref = torch.cat([model(a), model(b)], dim=1)
    assert (got - ref).abs().max().item() < 1e-4


def test_yarn_frequencies_follow_the_formula():
    cfg = get_preset("deepseek-v3-671b")
    inv_freq, attn_factor = inverse_frequencies(cfg)
    d, base, L0 = 64, 10000.0, 4096
    corr = lambda r: d * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(base))
    low, high = math.floor(corr(32)), math.ceil(corr(1))
    for i in [0, low, (low + high) // 2, high, 31]:
        theta = base ** (-2 * i / d)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        expected = theta / 40 * ramp + theta * (1 - ramp)
        assert inv_freq[i].item() == pytest.approx(expected, rel=1e-5)
    assert attn_factor == 1.0  # mscale == mscale_all_dim: no cos/sin scaling ...
    assert cfg.softmax_scale == pytest.approx(192**-0.5 * (0.1 * math.log(40) + 1) ** 2)  # ... but the logit scale


def test_gate_selects_by_biased_scores_and_weights_by_raw_scores():
    cfg = get_preset("toy-moe")
    moe = MoE(cfg)
    gate = moe.gate
    x = torch.randn(5, cfg.dim)
    with torch.no_grad():
        gate.weight.normal_()
        gate.e_score_correction_bias.copy_(torch.randn(cfg.n_routed_experts))
        weights, indices, _ = gate(x)
    s = torch.sigmoid(x @ gate.weight.T)
    b = gate.e_score_correction_bias
    for n in range(5):
        biased = (s[n] + b).view(cfg.n_expert_groups, -1)
        group_score = biased.sort(dim=-1, descending=True).values[:, :2].sum(-1)
        groups = group_score.argsort(descending=True)[: cfg.n_limited_groups].tolist()
        allowed = [e for e in range(cfg.n_routed_experts) if e // (cfg.n_routed_experts // cfg.n_expert_groups) in groups]
        chosen = sorted(allowed, key=lambda e: -(s[n, e] + b[e]).item())[: cfg.n_activated_experts]
        assert sorted(indices[n].tolist()) == sorted(chosen)
        w = s[n, chosen] / s[n, chosen].sum() * cfg.route_scale
        got = dict(zip(indices[n].tolist(), weights[n].tolist()))
        for e, wi in zip(chosen, w.tolist()):
            assert got[e] == pytest.approx(wi, rel=1e-5)


def test_moe_output_equals_per_token_expert_sum():
    cfg = get_preset("toy-moe")
    moe = MoE(cfg)
    torch.nn.init.normal_(moe.experts.gate_up_proj, std=0.1)
    torch.nn.init.normal_(moe.experts.down_proj, std=0.1)
    torch.nn.init.normal_(moe.gate.weight, std=0.5)
    x = torch.randn(2, 6, cfg.dim)
    with torch.no_grad():
        out = moe(x).view(-1, cfg.dim)
        weights, indices, _ = moe.gate(x.view(-1, cfg.dim))
        for n, xn in enumerate(x.view(-1, cfg.dim)):
            expected = moe.shared_experts(xn)
            for w, e in zip(weights[n], indices[n]):
                gate, up = (moe.experts.gate_up_proj[e] @ xn).chunk(2)
                expected = expected + w * (moe.experts.down_proj[e] @ (torch.nn.functional.silu(gate) * up))
            assert torch.allclose(out[n], expected, atol=1e-5)


def test_bias_balancing_evens_out_a_skewed_router():
    """The auxiliary-loss-free update alone (no gradient) drives a skewed router toward uniform load."""
    cfg = get_preset("toy-moe").replace(bias_update_speed=0.01)
    moe = MoE(cfg).train()
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.05)
        moe.gate.weight[0] += 0.5  # experts 0 and 1 favoured by every token
        moe.gate.weight[1] += 0.4
    torch.nn.init.normal_(moe.experts.gate_up_proj, std=0.02)
    torch.nn.init.normal_(moe.experts.down_proj, std=0.02)
    x = torch.randn(4, 64, cfg.dim).abs()  # positive inputs make the skew systematic

    def imbalance():
        with torch.no_grad():
            moe(x)
        load = moe.expert_load.clone()
        moe.expert_load.zero_()
        return (load.max() / load.mean()).item()

    before = imbalance()
    for _ in range(300):
        with torch.no_grad():
            moe(x)
        moe.update_bias()
    after = imbalance()
    assert before > 2.0 and after < 1.3, (before, after)


def test_sequence_balance_loss_formula():
    cfg = get_preset("toy-moe").replace(seq_aux_alpha=0.5)
    moe = MoE(cfg).train()
    torch.nn.init.normal_(moe.gate.weight, std=0.5)
    torch.nn.init.normal_(moe.experts.gate_up_proj, std=0.02)
    torch.nn.init.normal_(moe.experts.down_proj, std=0.02)
    x = torch.randn(2, 5, cfg.dim)
    moe(x)
    _, indices, scores = moe.gate(x.view(-1, cfg.dim))
    E, k, T = cfg.n_routed_experts, cfg.n_activated_experts, 5
    total = 0.0
    for b in range(2):
        rows = range(b * T, (b + 1) * T)
        for i in range(E):
            f = E / (k * T) * sum(int(i in indices[r].tolist()) for r in rows)
            p = sum((scores[r, i] / scores[r].sum()).item() for r in rows) / T
            total += f * p
    assert moe.aux_loss.item() == pytest.approx(0.5 * total / 2, rel=1e-5)


def _write_checkpoint(tmp_path, model):
    r1kit.save_model(model, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _write_checkpoint(tmp_path, r1kit.load_model("toy-dense"))
    tensors = load_file(d / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"
    del tensors[name]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="layers.1.self_attn.k_proj.weight"):
        r1kit.load_model(d)
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"k_proj.weight.*shape \(3, 3\)"):
        r1kit.load_model(d)


def test_unknown_model_type_and_pickles_are_refused(tmp_path):
    d = _write_checkpoint(tmp_path, r1kit.load_model("toy-dense"))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="gpt2"):
        r1kit.load_model(d)
    p = tmp_path / "pickled"
    p.mkdir()
    (p / "config.json").write_text(json.dumps(cfg))
    (p / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="pickle"):
        r1kit.load_model(p)
    with pytest.raises(CheckpointError, match="no such file"):
        r1kit.load_model(tmp_path / "nowhere")


def test_config_validation_names_field():
    with pytest.raises(ConfigError, match="arch"):
        ModelConfig(arch="gpt")
    with pytest.raises(ConfigError, match="n_limited_groups"):
        get_preset("toy-moe").replace(n_limited_groups=9)


def test_mla_cache_is_latent_plus_rope_key():
    from r1kit.models.params import kv_cache_bytes_per_token

    sizes = kv_cache_bytes_per_token(get_preset("deepseek-v3-671b"))
    assert sizes["kv_cache_bytes_per_token"] == (512 + 64) * 61 * 2  # 70,272 bytes in bf16
    assert sizes["full_kv_cache_bytes_per_token"] == 128 * (128 + 64 + 128) * 61 * 2


@pytest.mark.slow
def test_toy_mla_prefills_and_decodes_at_32k_tokens():
    """Chunked prefill of a 32K-token prompt and decoding after it, YaRN positions included (about a minute)."""
    from r1kit.generation import Engine, SamplingParams
    from r1kit.models.transformer import Transformer
    from r1kit.tokenizer import toy_tokenizer

    cfg = get_preset("toy-moe").replace(max_seq_len=32768 + 64, rope_factor=128.0)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompt = torch.randint(10, 100, (32768,)).tolist()
    engine = Engine(model, toy_tokenizer(), max_batch_size=1, max_seq_len=cfg.max_seq_len, prefill_chunk=1024)
    [out] = engine.generate([prompt], SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True))
    assert len(out.token_ids) == 8
    with torch.no_grad():  # the last decoded token's logits against a full forward over the tail of the context
        full = model.hidden(torch.tensor([prompt + out.token_ids[:-1]]))[:, -1]
        assert model.lm_head(full).argmax().item() == out.token_ids[-1]


def test_saved_tokenizer_round_trips_for_every_architecture(tmp_path):
    """A qwen2-type checkpoint must not swap r1kit's char tokenizer for transformers' Qwen2Tokenizer."""
    from r1kit.tokenizer import toy_tokenizer

    text = "<bos><|user|>What is 12 + 7?\n<|assistant|><think>\nx y</think>"
    expected = toy_tokenizer()(text, add_special_tokens=False).input_ids
    for preset in ("toy-dense", "toy-moe"):
        r1kit.save_model(r1kit.load_model(preset), tmp_path / preset, tokenizer=toy_tokenizer())
        assert r1kit.load_tokenizer(tmp_path / preset)(text, add_special_tokens=False).input_ids == expected
