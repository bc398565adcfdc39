"""r1kit's model against transformers' implementations, both directions, fp32, on padded batches."""

import pytest
import torch
import transformers

import r1kit
from r1kit.models.config import get_preset

TOL = 1e-4


def hf_deepseek_v3():
    cfg = transformers.DeepseekV3Config(
        vocab_size=96, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, routed_scaling_factor=2.5,
        kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=4,
        topk_group=2, num_experts_per_tok=3, first_k_dense_replace=1, norm_topk_prob=True, max_position_embeddings=512,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        rope_interleave=True, attn_implementation="eager",
    )
    model = transformers.DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight.normal_(0, 0.5)  # spread the router so selection is unambiguous
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.3)  # non-zero: steers selection
    return model


def hf_qwen2():
    cfg = transformers.Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=False, attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # transformers initialises biases to zero; make them count
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    return model


def hf_llama():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=True, rope_theta=100000.0, attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg).eval()


def padded_batch(vocab: int):
    """Two rows: a full one, and a shorter one padded on the right; and the same short row padded on the left."""
    ids = torch.randint(3, vocab, (2, 12))
    right = torch.ones(2, 12, dtype=torch.long)
    right[1, 8:] = 0
    return ids, right


def compare(hf_model, ours, vocab):
    ids, mask = padded_batch(vocab)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    valid = mask.bool()
    assert (ref[valid] - got[valid]).abs().max().item() <= TOL
    # left padding: transformers takes positions from position_ids, r1kit derives them from the mask
    left_ids = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids[1:, :8]], dim=1)
    left_mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    pos = (left_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf_model(input_ids=left_ids, attention_mask=left_mask, position_ids=pos).logits[:, 4:]
        got = ours(left_ids, attention_mask=left_mask)[:, 4:]
    assert (ref - got).abs().max().item() <= TOL


@pytest.mark.parametrize("make", [hf_deepseek_v3, hf_qwen2, hf_llama])
def test_transformers_to_r1kit(make, tmp_path):
    hf_model = make()
    hf_model.save_pretrained(tmp_path)
    ours = r1kit.load_model(tmp_path)
    assert ours.config.arch == hf_model.config.model_type
    compare(hf_model, ours, hf_model.config.vocab_size)


@pytest.mark.parametrize("preset", ["toy-moe", "toy-dense"])
def test_r1kit_to_transformers(preset, tmp_path):
    ours = r1kit.load_model(preset)
    if ours.config.n_routed_experts:
        with torch.no_grad():
            for moe in ours.moe_layers():
                moe.gate.e_score_correction_bias.copy_(torch.randn(ours.config.n_routed_experts) * 0.3)
                moe.gate.weight.normal_(0, 0.5)
    r1kit.save_model(ours, tmp_path / "ckpt")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="eager").eval()
    compare(hf_model, ours.eval(), ours.config.vocab_size)


def test_deepseek_v3_round_trip_keeps_mtp_and_bias(tmp_path):
    ours = r1kit.load_model("toy-moe")
    with torch.no_grad():
        ours.moe_layers()[0].gate.e_score_correction_bias.fill_(0.125)
    r1kit.save_model(ours, tmp_path / "a")
    again = r1kit.load_model(tmp_path / "a")
    for (n1, t1), (n2, t2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1
    assert again.config.n_mtp_layers == 1


def test_per_expert_checkpoint_layout_is_fused(tmp_path):
    """The released DeepSeek checkpoints store experts one by one; they load into the fused layout."""
    from safetensors.torch import load_file, save_file

    ours = r1kit.load_model("toy-moe")
    r1kit.save_model(ours, tmp_path / "fused")
    tensors = load_file(tmp_path / "fused" / "model.safetensors")
    split = {}
    for name, t in tensors.items():
        if name.endswith("experts.gate_up_proj"):
            prefix, inter = name.removesuffix(".gate_up_proj"), t.shape[1] // 2
            for j in range(t.shape[0]):
                split[f"{prefix}.{j}.gate_proj.weight"] = t[j, :inter].clone()
                split[f"{prefix}.{j}.up_proj.weight"] = t[j, inter:].clone()
        elif name.endswith("experts.down_proj"):
            prefix = name.removesuffix(".down_proj")
            for j in range(t.shape[0]):
                split[f"{prefix}.{j}.down_proj.weight"] = t[j].clone()
        else:
            split[name] = t
    save_file(split, tmp_path / "fused" / "model.safetensors")
    again = r1kit.load_model(tmp_path / "fused")
    ids = torch.randint(3, 100, (1, 10))
    with torch.no_grad():
        assert torch.allclose(again(ids), ours(ids), atol=1e-6)


def test_presets_are_consistent():
    cfg = get_preset("deepseek-v3-671b")
    assert (cfg.dim, cfg.n_layers, cfg.n_routed_experts, cfg.kv_lora_rank) == (7168, 61, 256, 512)
