"""Weight-only int8/int4 layers against the plain matmul of their dequantized weights; save/load; FP8 loading."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import r1kit
from r1kit.cli import main as cli
from r1kit.errors import CheckpointError, ConfigError
from r1kit.generation import Engine, SamplingParams
from r1kit.models.moe import Experts
from r1kit.models.quantize import Fp8Linear, Int4Linear, Int8Linear, QuantizedExperts, quantize_model
from r1kit.tokenizer import toy_tokenizer


def int8_weight(layer: Int8Linear) -> torch.Tensor:
    """W = q * scale, written out from the documented format."""
    return layer.weight.float() * layer.scales.float().unsqueeze(-1)


def int4_weight(layer: Int4Linear) -> torch.Tensor:
    """W[n, k] = (code - 8) * scale + zero, codes two a byte (high nibble first), one (scale, zero) per group."""
    packed = layer.weight.int()
    codes = torch.stack([packed // 16, packed % 16], dim=-1).flatten(-2).float()  # (..., N, Kp)
    sz = layer.scales_and_zeros.float()  # (..., Kp/g, N, 2)
    scale = sz[..., 0].transpose(-1, -2).repeat_interleave(layer.group_size, dim=-1)  # (..., N, Kp)
    zero = sz[..., 1].transpose(-1, -2).repeat_interleave(layer.group_size, dim=-1)
    return ((codes - 8) * scale + zero)[..., : layer.in_features]


def within_bf16(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> bool:
    """bf16 inputs (rounded in the reference too), fp32 sums, bf16 output/scale roundings: a few 2^-8 relative."""
    scale = x.abs().float() @ w.abs().T  # bounds each sum's magnitude
    return bool(((out.float() - ref).abs() <= 2**-7 * ref.abs() + 2**-8 * scale.reshape(ref.shape) + 1e-6).all())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("N,K", [(48, 96), (33, 200), (100, 40)])  # K % 16 != 0 takes the dequantizing path
@pytest.mark.parametrize("M", [1, 5, 33])
def test_int8_linear_is_the_matmul_of_its_dequantized_weight(N, K, M, bias):
    w, b = torch.randn(N, K), (torch.randn(N) if bias else None)
    layer = Int8Linear.from_float(w, b)
    assert layer.weight.dtype == torch.int8 and layer.scales.shape == (N,)
    deq = int8_weight(layer)
    assert ((deq - w).abs() <= 0.51 * layer.scales.float()[:, None]).all()  # round to nearest step
    x = torch.randn(2, M, K)
    out = layer(x)
    ref = F.linear(x.bfloat16().float(), deq, b)
    assert out.shape == (2, M, N) and out.dtype == torch.float32
    assert within_bf16(out, ref, x, deq)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("N,K", [(48, 128), (33, 200), (256, 96)])  # N % 16, K % group padded
@pytest.mark.parametrize("M", [1, 7])
def test_int4_linear_is_the_matmul_of_its_dequantized_weight(N, K, M, group_size):
    w, b = torch.randn(N, K), torch.randn(N)
    layer = Int4Linear.from_float(w, group_size, b)
    Kp = math.ceil(K / group_size) * group_size
    assert layer.weight.shape == (N, Kp // 2) and layer.scales_and_zeros.shape == (Kp // group_size, N, 2)
    deq = int4_weight(layer)
    groups = torch.nn.functional.pad(w, (0, Kp - K)).view(N, -1, group_size)
    step = ((groups.amax(-1) - groups.amin(-1)) / 15).repeat_interleave(group_size, 1)[:, :K]
    assert ((deq - w).abs() <= 0.51 * step + 0.01 * w.abs().amax()).all()  # half a step (+ bf16 scale rounding)
    x = torch.randn(M, K)
    out = layer(x)
    assert within_bf16(out, F.linear(x.bfloat16().float(), deq, b), x, deq)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_experts_match_float_experts_on_dequantized_weights(bits):
    cfg = r1kit.models.config.get_preset("toy-moe")
    experts = Experts(cfg)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.1)
    torch.nn.init.normal_(experts.down_proj, std=0.1)
    quantized = quantize_model(torch.nn.ModuleDict({"experts": experts}), bits)["experts"]
    assert isinstance(quantized, QuantizedExperts)
    dequantize = int8_weight if bits == 8 else int4_weight
    reference = Experts(cfg)  # the float grouped-matmul path, on the dequantized weights
    reference.gate_up_proj.data = dequantize(quantized.gate_up_proj)
    reference.down_proj.data = dequantize(quantized.down_proj)
    N, k = 11, cfg.n_activated_experts
    x = torch.randn(N, cfg.dim).bfloat16().float()
    indices = torch.stack([torch.randperm(cfg.n_routed_experts)[:k] for _ in range(N)])
    indices[:, 0] = 3  # expert 3 busy; some experts get no token
    weights = torch.rand(N, k)
    counts = torch.bincount(indices.flatten(), minlength=cfg.n_routed_experts)
    out, ref = quantized(x, weights, indices, counts), reference(x, weights, indices, counts)
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()  # bf16 activations between the two matmuls


@pytest.mark.parametrize("preset,scheme", [("toy-dense", "int8"), ("toy-dense", "int4-g64"), ("toy-moe", "int4")])
def test_save_and_load_give_identical_outputs(tmp_path, preset, scheme):
    model = r1kit.load_model(preset, quantize=scheme).eval()
    ids = torch.randint(3, 100, (2, 10))
    with torch.no_grad():
        before = model(ids)
    r1kit.save_model(model, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "r1kit" and config["version"] == 1
    bits = 8 if scheme == "int8" else 4
    assert config["modules"]["model.layers.0.self_attn.o_proj"]["bits"] == bits
    assert config["modules"]["lm_head"] == {"bits": 8, "group_size": None}  # the head stays int8
    with safe_open(tmp_path / "q" / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.o_proj.weight").dtype == (torch.int8 if bits == 8 else torch.uint8)
    loaded = r1kit.load_model(tmp_path / "q").eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids), before)
    with pytest.raises(CheckpointError, match="already quantized"):
        r1kit.load_model(tmp_path / "q", quantize="int8")


def test_int8_toy_model_decodes_the_float_models_greedy_tokens():
    model = r1kit.load_model("toy-dense").eval()
    quantized = quantize_model(copy.deepcopy(model), 8).eval()
    prompts = [[5, 17, 40, 33], [9, 12, 50, 54, 23, 31], [44]]
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    expected = Engine(model, toy_tokenizer(), max_batch_size=3, max_seq_len=96).generate(prompts, params)
    got = Engine(quantized, toy_tokenizer(), max_batch_size=3, max_seq_len=96).generate(prompts, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]


def test_bf16_quantized_mla_model_keeps_kv_b_proj_float_and_packed():
    """MLA's absorbed decode reads kv_b_proj's weight: it stays a float Linear (packed in bf16 engine steps)."""
    model = r1kit.load_model("toy-moe", dtype=torch.bfloat16, quantize="int8").eval()
    assert type(model.layers[0].self_attn.kv_b_proj).__name__ == "Linear"
    engine = Engine(model, toy_tokenizer(), max_batch_size=2, max_seq_len=64)
    prompts = [[5, 17, 40, 33], [44]]
    done = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))
    for ids, completion in zip(prompts, done):
        with torch.no_grad():
            logits = model(torch.tensor([ids + completion.token_ids]))[0, len(ids) - 1: -1].float()
        top2 = logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.05
        assert (logits.argmax(-1)[clear] == torch.tensor(completion.token_ids)[clear]).all()


def test_bad_schemes_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="unknown scheme 'int3'"):
        r1kit.load_model("toy-dense", quantize="int3")
    model = r1kit.load_model("toy-dense")
    with pytest.raises(ConfigError, match="group_size applies to bits=4"):
        quantize_model(model, 8, 64)
    with pytest.raises(ConfigError, match="group_size must be one of"):
        quantize_model(model, 4, 48)


def test_cli_quantize_writes_what_quantize_model_computes(tmp_path, capsys):
    assert cli(["quantize", "toy-dense", str(tmp_path / "q"), "--bits", "4", "--group-size", "64", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scheme"] == "int4-g64" and summary["modules"] == 22 and summary["tokenizer"]
    ids = torch.randint(3, 100, (1, 8))
    with torch.no_grad():
        expected = quantize_model(r1kit.load_model("toy-dense"), 4, 64).eval()(ids)
        assert torch.equal(r1kit.load_model(tmp_path / "q").eval()(ids), expected)
    assert cli(["quantize", "toy-dense", str(tmp_path / "x"), "--bits", "8", "--group-size", "32"]) == 2
    assert "--group-size applies to --bits 4" in capsys.readouterr().err


# ---- GGUF Q4_0 / Q4_1: codes kept as stored --------------------------------------------------------------------

def test_gguf_q4_blocks_become_int4_codes_without_requantizing(tmp_path):
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize

    from r1kit.models.gguf import read_gguf, read_gguf_int4_codes

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in [("block_count", 1), ("embedding_length", 64), ("feed_forward_length", 96), ("head_count", 4),
                       ("head_count_kv", 2), ("context_length", 128), ("vocab_size", 32)]:
        getattr(writer, f"add_{add}")(value)
    writer.add_layer_norm_rms_eps(1e-5)
    Q = gguf.GGMLQuantizationType
    for name, shape, qtype in [("blk.0.attn_q.weight", (64, 64), Q.Q4_1), ("blk.0.attn_k.weight", (32, 64), Q.Q4_0),
                               ("blk.0.ffn_up.weight", (96, 64), Q.Q4_1), ("blk.0.ffn_down.weight", (64, 96), Q.Q8_0)]:
        blocks = quantize(torch.randn(shape).numpy(), qtype)
        writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    _, dequantized = read_gguf(path)  # the gguf package's dequantization (llama q/k rows un-permuted)
    codes = read_gguf_int4_codes(path)
    assert sorted(codes) == ["layers.0.mlp.up_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.q_proj"]
    for name, (q, scale, zero) in codes.items():
        w = dequantized[f"{name}.weight"]
        assert q.dtype == torch.uint8 and int(q.max()) <= 15
        assert torch.equal((q.float() - 8) * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1), w)
        layer = Int4Linear.from_codes(q, torch.stack([scale.T, zero.T], dim=-1), 32)  # fp32 scales: exact
        x = torch.randn(3, w.shape[1])
        assert torch.allclose(layer(x), F.linear(x, w), atol=1e-4, rtol=1e-4)


def _write_tiny_llama_gguf(path, types):
    """A whole 1-layer llama GGUF (tied head) with its tensors stored as `types` says: {gguf name: GGML type}."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize

    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in [("block_count", 1), ("embedding_length", 64), ("feed_forward_length", 96), ("head_count", 4),
                       ("head_count_kv", 2), ("context_length", 128), ("vocab_size", 64)]:
        getattr(writer, f"add_{add}")(value)
    writer.add_layer_norm_rms_eps(1e-5)
    shapes = {"token_embd.weight": (64, 64), "output_norm.weight": (64,), "blk.0.attn_norm.weight": (64,),
              "blk.0.ffn_norm.weight": (64,), "blk.0.attn_q.weight": (64, 64), "blk.0.attn_k.weight": (32, 64),
              "blk.0.attn_v.weight": (32, 64), "blk.0.attn_output.weight": (64, 64),
              "blk.0.ffn_gate.weight": (96, 64), "blk.0.ffn_up.weight": (96, 64), "blk.0.ffn_down.weight": (64, 96)}
    torch.manual_seed(0)
    for name, shape in shapes.items():
        w = (1 + 0.1 * torch.randn(shape)) if name.endswith("norm.weight") else 0.1 * torch.randn(shape)
        qtype = types.get(name, gguf.GGMLQuantizationType.F32)
        blocks = quantize(w.numpy(), qtype)
        writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_load_gguf_keeping_its_quantization(tmp_path):
    """quantize='gguf': Q4 blocks run as int4 with their codes, Q8_0 as int8 within one int8 step of the gguf
    package's dequantization, float tensors stay float; the tied head gets an int8 copy of the quantized embedding."""
    gguf = pytest.importorskip("gguf")
    from r1kit.models.gguf import read_gguf

    Q = gguf.GGMLQuantizationType
    path = _write_tiny_llama_gguf(tmp_path / "mixed.gguf", {
        "token_embd.weight": Q.Q8_0, "blk.0.attn_q.weight": Q.Q4_1, "blk.0.attn_k.weight": Q.Q4_0,
        "blk.0.attn_output.weight": Q.Q8_0, "blk.0.ffn_gate.weight": Q.Q4_1, "blk.0.ffn_up.weight": Q.Q4_1,
        "blk.0.ffn_down.weight": Q.Q8_0})  # attn_v stays F32
    _, reference = read_gguf(path)  # every tensor dequantized by the gguf package
    model = r1kit.load_model(path, quantize="gguf").eval()
    layer = model.layers[0]
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if name.endswith("_proj") or name == "lm_head"}
    assert kinds == {"lm_head": "Int8Linear", "layers.0.self_attn.q_proj": "Int4Linear",
                     "layers.0.self_attn.k_proj": "Int4Linear", "layers.0.self_attn.v_proj": "Linear",
                     "layers.0.self_attn.o_proj": "Int8Linear", "layers.0.mlp.gate_proj": "Int4Linear",
                     "layers.0.mlp.up_proj": "Int4Linear", "layers.0.mlp.down_proj": "Int8Linear"}
    for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj"):  # codes kept: only the scales' bf16 rounding
        w = reference[f"layers.0.{name}.weight"]
        assert torch.allclose(int4_weight(layer.get_submodule(name)), w, rtol=2**-8, atol=2**-8 * w.abs().max())
    for name, m in (("layers.0.self_attn.o_proj.weight", layer.self_attn.o_proj),
                    ("layers.0.mlp.down_proj.weight", layer.mlp.down_proj), ("embed_tokens.weight", model.lm_head)):
        w = reference[name]
        step = w.abs().amax(dim=1, keepdim=True) / 127  # one int8 step of the row (+ the scale's bf16 rounding)
        assert ((int8_weight(m) - w).abs() <= 0.5 * step * (1 + 2**-7) + 1e-7).all()
    assert torch.equal(layer.self_attn.v_proj.weight, reference["layers.0.self_attn.v_proj.weight"])
    assert torch.equal(model.embed_tokens.weight, reference["embed_tokens.weight"])

    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        float_model = r1kit.load_model(path).eval()
        want, got = float_model(ids), model(ids)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    with pytest.raises(ConfigError, match="not a .gguf file"):
        r1kit.load_model("toy-dense", quantize="gguf")


# ---- FP8 block-scaled checkpoints (DeepSeek-V3/R1 release layout) ------------------------------------------------

def _to_fp8_release(directory, block=128):
    """Rewrite a saved toy DeepSeek-V3 directory as the FP8 release stores it: every projection weight
    float8_e4m3fn with a weight_scale_inv per 128x128 block, experts one by one. Returns the hand dequantization."""
    tensors = load_file(directory / "model.safetensors")
    for name in [n for n in tensors if n.endswith("experts.gate_up_proj")]:  # fused -> per expert
        prefix, gate_up, down = name.removesuffix(".gate_up_proj"), tensors.pop(name), tensors.pop(
            name.replace("gate_up_proj", "down_proj"))
        for j in range(gate_up.shape[0]):
            gate, up = gate_up[j].chunk(2)
            for proj, w in [("gate_proj", gate), ("up_proj", up), ("down_proj", down[j])]:
                tensors[f"{prefix}.{j}.{proj}.weight"] = w.contiguous()
    out, expected = {}, {}
    for name, w in tensors.items():
        if not name.endswith("_proj.weight"):
            out[name] = w
            continue
        rows, cols = math.ceil(w.shape[0] / block), math.ceil(w.shape[1] / block)
        scale_inv = torch.rand(rows, cols) * 2e-3 + 1e-4
        fp8 = torch.empty_like(w, dtype=torch.float8_e4m3fn)
        hand = torch.empty_like(w)
        for i in range(rows):
            for j in range(cols):
                r, c = slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block)
                fp8[r, c] = (w[r, c] / scale_inv[i, j]).clamp(-448, 448).to(torch.float8_e4m3fn)
                hand[r, c] = (fp8[r, c].float() * scale_inv[i, j]).bfloat16().float()
        out[name], out[f"{name}_scale_inv"], expected[name] = fp8, scale_inv, hand
    save_file(out, directory / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block]}
    (directory / "config.json").write_text(json.dumps(config))
    return expected


def test_fp8_block_scaled_checkpoint_loads_as_its_hand_dequantization(tmp_path):
    r1kit.save_model(r1kit.load_model("toy-moe"), tmp_path / "m")
    expected = _to_fp8_release(tmp_path / "m")
    assert any(t.shape[0] % 128 for t in expected.values())  # partial edge blocks are exercised
    model = r1kit.load_model(tmp_path / "m")
    state = model.state_dict()
    checked = 0
    for hf_name, hand in expected.items():
        name = hf_name.removeprefix("model.")
        if name.startswith(f"layers.{model.config.n_layers}."):
            continue  # the MTP depth: its eh_proj is checked below
        if ".experts." in name:  # experts.{j}.{proj}.weight -> rows of the fused stacks
            prefix, j, proj = name.rsplit(".", 3)[:3]
            fused = state[f"{prefix}.gate_up_proj" if proj != "down_proj" else f"{prefix}.down_proj"][int(j)]
            half = fused.shape[0] // 2
            got = {"gate_proj": fused[:half], "up_proj": fused[half:], "down_proj": fused}[proj]
        else:
            got = state[name]
        assert torch.equal(got, hand), name
        checked += 1
    assert checked > 30
    mtp = state["mtp.0.eh_proj.weight"]
    assert torch.equal(mtp, expected[f"model.layers.{model.config.n_layers}.eh_proj.weight"])


def test_fp8_checkpoint_kept_in_fp8_computes_with_its_hand_dequantization(tmp_path):
    """quantize='fp8': the projections keep their FP8 bytes and scales (routed experts fused with their scales),
    kv_b_proj and the MTP depth are dequantized, and each layer computes with the hand dequantization."""
    r1kit.save_model(r1kit.load_model("toy-moe"), tmp_path / "m")
    expected = _to_fp8_release(tmp_path / "m", block=32)  # 32 divides moe_inter_dim (96): experts stay FP8
    release = load_file(tmp_path / "m" / "model.safetensors")
    model = r1kit.load_model(tmp_path / "m", quantize="fp8").eval()
    dequantized = r1kit.load_model(tmp_path / "m").eval()
    kept = {n: m for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert "layers.0.self_attn.q_a_proj" in kept and "layers.1.mlp.experts.gate_up_proj" in kept
    assert "layers.1.mlp.shared_experts.down_proj" in kept and "layers.0.mlp.up_proj" in kept
    assert not any("kv_b_proj" in n or n.startswith("mtp.") for n in kept)
    attn = model.layers[0].self_attn.q_a_proj
    assert torch.equal(attn.weight.view(torch.uint8),
                       release["model.layers.0.self_attn.q_a_proj.weight"].view(torch.uint8))  # the stored bytes
    for name, m in kept.items():
        assert m.weight.dtype == torch.float8_e4m3fn
        x = torch.randn(5, m.in_features)
        if ".experts." in name:  # expert 3 of the fused stack: gate rows then up rows, or its down matrix
            prefix = f"model.{name.rsplit('.', 1)[0]}.3"
            w = torch.cat([expected[f"{prefix}.gate_proj.weight"], expected[f"{prefix}.up_proj.weight"]]) if (
                name.endswith("gate_up_proj")) else expected[f"{prefix}.down_proj.weight"]
            got = m(x, expert=3)
        else:
            w, got = expected[f"model.{name}.weight"], m(x)
        want = F.linear(x.bfloat16().float(), w)  # bf16 inputs, bf16 weights, bf16 output rounding
        assert torch.allclose(got, want, rtol=2**-7, atol=2**-7 * float((x.abs() @ w.abs().T).max())), name
    ids = torch.randint(3, 128, (2, 10))
    with torch.no_grad():
        got, want = model(ids), dequantized(ids)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    # saved and reloaded as r1kit's format (version 2): the same model
    r1kit.save_model(model, tmp_path / "kept")
    again = r1kit.load_model(tmp_path / "kept").eval()
    assert isinstance(again.layers[1].mlp.experts.gate_up_proj, Fp8Linear)
    with torch.no_grad():
        assert torch.equal(again(ids), got)
    r1kit.save_model(r1kit.load_model("toy-dense"), tmp_path / "plain")
    with pytest.raises(ConfigError, match="is not one"):
        r1kit.load_model(tmp_path / "plain", quantize="fp8")


def test_fp8_weight_without_its_scale_is_named(tmp_path):
    r1kit.save_model(r1kit.load_model("toy-moe"), tmp_path / "m")
    _to_fp8_release(tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    del tensors["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.o_proj\.weight.* FP8 .*no"):
        r1kit.load_model(tmp_path / "m")
