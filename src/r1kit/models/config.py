"""Model configuration: one dataclass for the DeepSeek-V3 family and the dense Qwen2/Llama students, plus presets.

`arch` picks the attention and MLP variants when the model is built:
- "deepseek_v3": MLA attention, interleaved RoPE with YaRN, MoE after `n_dense_layers` dense layers, optional MTP.
- "qwen2" / "llama": GQA attention (QKV bias for qwen2), half-split RoPE, dense SwiGLU MLP.

Conversion to and from Hugging Face `config.json` lives here too, so the field mapping is written once.
Left out: FP8 block quantization of the official release (weights are dequantized on load).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.errors import ConfigError

ARCHS = ("deepseek_v3", "qwen2", "llama")


@dataclass
class ModelConfig:
    arch: str = "deepseek_v3"
    vocab_size: int = 129280
    dim: int = 7168
    n_layers: int = 61
    n_heads: int = 128
    inter_dim: int = 18432  # hidden size of the dense SwiGLU MLPs
    norm_eps: float = 1e-6
    max_seq_len: int = 163840
    tie_embeddings: bool = False
    # gqa (qwen2 / llama)
    n_kv_heads: int = 0  # 0: same as n_heads
    head_dim: int = 0  # 0: dim // n_heads
    qkv_bias: bool = False
    # mla
    q_lora_rank: int = 1536  # 0: direct query projection
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # moe
    n_dense_layers: int = 3
    n_routed_experts: int = 256  # 0: every layer dense
    n_shared_experts: int = 1
    n_activated_experts: int = 8
    n_expert_groups: int = 8
    n_limited_groups: int = 4
    score_func: str = "sigmoid"  # sigmoid | softmax
    route_scale: float = 2.5
    moe_inter_dim: int = 2048
    norm_topk_prob: bool = True
    bias_update_speed: float = 1e-3  # gamma of auxiliary-loss-free balancing
    seq_aux_alpha: float = 1e-4  # weight of the sequence-wise balance loss (0: off)
    # rope / yarn
    rope_theta: float = 10000.0
    rope_scaling: str = "yarn"  # none | yarn | llama3
    rope_factor: float = 40.0
    original_seq_len: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    # mtp
    n_mtp_layers: int = 1
    mtp_loss_weight: float = 0.3
    # special tokens
    bos_token_id: int | None = 0
    eos_token_id: list[int] = field(default_factory=lambda: [1])
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"model config field 'arch': {self.arch!r} is not one of {ARCHS}")
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        if self.eos_token_id is None:
            self.eos_token_id = []
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model config field {name!r} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.is_mla:
            if self.qk_rope_head_dim % 2:
                raise ConfigError("model config field 'qk_rope_head_dim' must be even")
        elif self.head_dim % 2:
            raise ConfigError("model config field 'head_dim' must be even")
        if self.n_routed_experts:
            if self.score_func not in ("sigmoid", "softmax"):
                raise ConfigError(f"model config field 'score_func': {self.score_func!r} is not sigmoid|softmax")
            if self.n_routed_experts % self.n_expert_groups:
                raise ConfigError("model config: n_routed_experts must be a multiple of n_expert_groups")
            if not 1 <= self.n_limited_groups <= self.n_expert_groups:
                raise ConfigError("model config field 'n_limited_groups' must be in [1, n_expert_groups]")
            if self.n_activated_experts > self.n_routed_experts:
                raise ConfigError("model config: n_activated_experts exceeds n_routed_experts")
        if self.rope_scaling not in ("none", "yarn", "llama3"):
            raise ConfigError(f"model config field 'rope_scaling': {self.rope_scaling!r} is not none|yarn|llama3")

    @property
    def is_mla(self) -> bool:
        return self.arch == "deepseek_v3"

    def is_moe_layer(self, layer_id: int) -> bool:
        return self.n_routed_experts > 0 and layer_id >= self.n_dense_layers

    @property
    def softmax_scale(self) -> float:
        """Attention logit scale, with YaRN's mscale correction when the context is extended."""
        qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim
        scale = qk_dim**-0.5
        if self.rope_scaling == "yarn" and self.rope_factor > 1 and self.mscale_all_dim:
            scale *= yarn_mscale(self.rope_factor, self.mscale_all_dim) ** 2
        return scale

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------

_DENSE = {
    "n_routed_experts": 0, "n_shared_experts": 0, "n_dense_layers": 0, "n_mtp_layers": 0, "rope_scaling": "none", "q_lora_rank": 0
}

PRESETS: dict[str, ModelConfig] = {
    # The official DeepSeek-V3 / R1 config (configs/config_671B.json), 128K context via YaRN.
    "deepseek-v3-671b": ModelConfig(),
    # DeepSeek-V2-Lite-style 16B: direct query, 64 experts + 2 shared, 6 active, no groups.
    "deepseek-v2-lite": ModelConfig(
        vocab_size=102400, dim=2048, n_layers=27, n_heads=16, inter_dim=10944, q_lora_rank=0,
        n_dense_layers=1, n_routed_experts=64, n_shared_experts=2, n_activated_experts=6, n_expert_groups=1,
        n_limited_groups=1, score_func="softmax", route_scale=1.0, moe_inter_dim=1408, norm_topk_prob=False,
        rope_factor=40.0, max_seq_len=163840, n_mtp_layers=0, bos_token_id=100000, eos_token_id=[100001],
    ),
    # A CPU toy with every V3 feature: MLA (low-rank q), group-limited sigmoid MoE with shared expert, YaRN, MTP.
    "toy-moe": ModelConfig(
        vocab_size=128, dim=128, n_layers=4, n_heads=4, inter_dim=384, q_lora_rank=64, kv_lora_rank=32,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_dense_layers=1, n_routed_experts=8,
        n_shared_experts=1, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2, route_scale=1.0,
        moe_inter_dim=96, max_seq_len=1024, original_seq_len=256, rope_factor=4.0, n_mtp_layers=1,
        bos_token_id=1, eos_token_id=[2], pad_token_id=0,
    ),
    # A dense Qwen2-style student for the toy pipeline (a fraction of toy-moe's size).
    "toy-dense": ModelConfig(
        arch="qwen2", vocab_size=128, dim=96, n_layers=3, n_heads=4, n_kv_heads=2, inter_dim=256, qkv_bias=True,
        max_seq_len=1024, rope_theta=10000.0, tie_embeddings=True, bos_token_id=1, eos_token_id=[2], pad_token_id=0,
        **_DENSE,
    ),
    "distill-qwen-1.5b": ModelConfig(
        arch="qwen2", vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, inter_dim=8960,
        qkv_bias=True, max_seq_len=131072, rope_theta=10000.0, norm_eps=1e-6, bos_token_id=151646,
        eos_token_id=[151643], **_DENSE,
    ),
    "distill-qwen-7b": ModelConfig(
        arch="qwen2", vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, inter_dim=18944,
        qkv_bias=True, max_seq_len=131072, rope_theta=10000.0, norm_eps=1e-6, bos_token_id=151646,
        eos_token_id=[151643], **_DENSE,
    ),
    "smollm2-135m": ModelConfig(
        arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, inter_dim=1536,
        max_seq_len=8192, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True, bos_token_id=1,
        eos_token_id=[2], pad_token_id=2, **_DENSE,
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name])


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face config.json <-> ModelConfig
# ---------------------------------------------------------------------------------------------------------------

_HF_ARCH = {"deepseek_v3": "DeepseekV3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def _rope_params(hf: dict) -> dict:
    """transformers 5 writes `rope_parameters`; older configs write `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_scaling") or {})
    params.update(hf.get("rope_parameters") or {})
    if "rope_theta" not in params and "rope_theta" in hf:
        params["rope_theta"] = hf["rope_theta"]
    return params


def from_hf_config(hf: dict) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face `config.json` dict."""
    model_type = hf.get("model_type")
    if model_type not in ARCHS:
        raise ConfigError(f"config.json: model_type {model_type!r} is not supported (supported: {', '.join(ARCHS)})")
    try:
        rope = _rope_params(hf)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "yarn", "llama3"):
            raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (default, yarn, llama3)")
        eos = hf.get("eos_token_id")
        c = {
            "arch": model_type, "vocab_size": hf["vocab_size"], "dim": hf["hidden_size"], "n_layers": hf["num_hidden_layers"],
            "n_heads": hf["num_attention_heads"], "inter_dim": hf["intermediate_size"], "norm_eps": hf.get("rms_norm_eps", 1e-6),
            "max_seq_len": hf.get("max_position_embeddings", 4096), "tie_embeddings": hf.get("tie_word_embeddings", False),
            "rope_theta": float(rope.get("rope_theta", 10000.0)),
            "rope_scaling": {"default": "none"}.get(rope_type, rope_type),
            "rope_factor": float(rope.get("factor", 1.0)),
            "original_seq_len": int(rope.get("original_max_position_embeddings", hf.get("max_position_embeddings", 4096))),
            "beta_fast": float(rope.get("beta_fast", 32.0)), "beta_slow": float(rope.get("beta_slow", 1.0)),
            "mscale": float(rope.get("mscale", 1.0)), "mscale_all_dim": float(rope.get("mscale_all_dim", 0.0)),
            "low_freq_factor": float(rope.get("low_freq_factor", 1.0)),
            "high_freq_factor": float(rope.get("high_freq_factor", 4.0)),
            "bos_token_id": hf.get("bos_token_id"), "eos_token_id": eos if isinstance(eos, list) else [eos] if eos is not None else [],
            "pad_token_id": hf.get("pad_token_id"),
        }
        if model_type == "deepseek_v3":
            if hf.get("rope_interleave", True) is False:
                raise ConfigError("config.json: rope_interleave=false is not supported for deepseek_v3")
            c.update(
                q_lora_rank=hf.get("q_lora_rank") or 0, kv_lora_rank=hf["kv_lora_rank"],
                qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
                v_head_dim=hf["v_head_dim"], n_dense_layers=hf.get("first_k_dense_replace", 0),
                n_routed_experts=hf.get("n_routed_experts") or 0, n_shared_experts=hf.get("n_shared_experts") or 0,
                n_activated_experts=hf.get("num_experts_per_tok") or 0, n_expert_groups=hf.get("n_group") or 1,
                n_limited_groups=hf.get("topk_group") or 1, score_func=hf.get("scoring_func", "sigmoid"),
                route_scale=float(hf.get("routed_scaling_factor", 1.0)), moe_inter_dim=hf["moe_intermediate_size"],
                norm_topk_prob=hf.get("norm_topk_prob", True),
                n_mtp_layers=hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", 0)) or 0,
                n_kv_heads=hf["num_attention_heads"],
            )
        else:
            c.update(
                n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                qkv_bias=model_type == "qwen2" or hf.get("attention_bias", False), **_DENSE,
            )
            c["rope_scaling"] = {"default": "none"}.get(rope_type, rope_type)
    except KeyError as e:
        raise ConfigError(f"config.json ({model_type}): missing field {e.args[0]!r}") from None
    return ModelConfig(**c)


def to_hf_config(cfg: ModelConfig) -> dict:
    """The Hugging Face `config.json` dict that makes transformers build the same model."""
    rope: dict = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "yarn" and cfg.rope_factor > 1:
        rope = {
            "rope_type": "yarn", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
            "original_max_position_embeddings": cfg.original_seq_len, "beta_fast": cfg.beta_fast,
            "beta_slow": cfg.beta_slow, "mscale": cfg.mscale, "mscale_all_dim": cfg.mscale_all_dim,
        }
    elif cfg.rope_scaling == "llama3":
        rope = {
            "rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
            "original_max_position_embeddings": cfg.original_seq_len, "low_freq_factor": cfg.low_freq_factor,
            "high_freq_factor": cfg.high_freq_factor,
        }
    hf = {
        "architectures": [_HF_ARCH[cfg.arch]], "model_type": cfg.arch, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "intermediate_size": cfg.inter_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "rms_norm_eps": cfg.norm_eps, "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "rope_parameters": rope,
        "rope_theta": cfg.rope_theta, "rope_scaling": None if rope["rope_type"] == "default" else rope,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id[0] if len(cfg.eos_token_id) == 1 else cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "torch_dtype": "float32", "use_cache": True,
    }
    if cfg.arch == "deepseek_v3":
        hf.update(
            q_lora_rank=cfg.q_lora_rank or None, kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
            qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, num_key_value_heads=cfg.n_heads,
            first_k_dense_replace=cfg.n_dense_layers if cfg.n_routed_experts else cfg.n_layers,
            n_routed_experts=cfg.n_routed_experts or None, n_shared_experts=cfg.n_shared_experts or None,
            num_experts_per_tok=cfg.n_activated_experts or None, n_group=cfg.n_expert_groups,
            topk_group=cfg.n_limited_groups, scoring_func=cfg.score_func, routed_scaling_factor=cfg.route_scale,
            moe_intermediate_size=cfg.moe_inter_dim, norm_topk_prob=cfg.norm_topk_prob,
            num_nextn_predict_layers=cfg.n_mtp_layers, rope_interleave=True, attention_bias=False,
        )
    else:
        hf.update(num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim)
        if cfg.arch == "llama":
            hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
    return hf


def load_hf_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise ConfigError(f"{directory}: no config.json (expected a Hugging Face checkpoint directory)")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return from_hf_config(hf)
