"""Generation: `generate` (the public one-call API) over the reusable `Engine`, or over vLLM (`VLLMEngine`)."""

from __future__ import annotations

from r1kit.generation.engine import Completion, Engine, Request
from r1kit.generation.sampling import SamplingParams
from r1kit.generation.vllm_backend import VLLMEngine  # imports vllm only when one is built
from r1kit.reasoning import split_reasoning

__all__ = ["Completion", "Engine", "Request", "SamplingParams", "VLLMEngine", "generate", "split_reasoning"]


def generate(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | list[int] | None = None,
    stop: list[str] | str | None = None,
    max_batch_size: int = 32,
    matmul_dtype=None,
    speculative: str | None = None,
    tools=None,
) -> list[Completion]:
    """Generate one completion per prompt (design.md §3).

    model: an r1kit model, or a `VLLMEngine` (then vLLM generates, with the same contract; `tokenizer` may be
        None, the engine's own is used).
    prompts: templated strings, or chat message lists (the tokenizer's chat template is applied).
    seed: an int (prompt i uses seed + i), a list with one seed per prompt, or None (unseeded).
    Temperature 0 is greedy. Batching, caching and stopping happen inside.
    matmul_dtype: torch.bfloat16 runs an fp32 model's linear layers in bf16 on packed weights (see `Engine`).
    speculative: "mtp" drafts with the model's MTP head (see `Engine`); requests with the same prompt always
    share its prefill.
    tools: a `r1kit.tools.ToolConfig`: the model may call the sandboxed Python interpreter (docs/tools.md);
    each Completion then carries `tool_calls` and `model_mask`.
    """
    if isinstance(seed, int):
        seeds = [seed + i for i in range(len(prompts))]
    elif seed is None:
        seeds = [None] * len(prompts)
    else:
        seeds = list(seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                             min_p=min_p, seed=s, stop=list(stop) if isinstance(stop, list) else stop or [])
              for s in seeds]
    if isinstance(model, VLLMEngine):
        if tools is not None:
            raise ValueError("tools run in r1kit's own engine, not with a VLLMEngine")
        return model.generate(prompts, params)
    engine = Engine(model, tokenizer, max_batch_size=max(1, min(len(prompts), max_batch_size)),
                    matmul_dtype=matmul_dtype, speculative=speculative, tools=tools)
    encoded = [engine.encode(p)[0] for p in prompts]
    # a cache just long enough for the longest prompt plus its new tokens, rounded up so shapes repeat
    need = max(len(ids) for ids in encoded) + max_new_tokens + 1
    engine.max_seq_len = min(engine.max_seq_len, -(-need // 128) * 128)
    return engine.generate(encoded, params)
