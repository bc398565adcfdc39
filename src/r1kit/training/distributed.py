"""Several training processes: the process group, each rank's share of a step, FSDP2 sharding, full weights.

    torchrun --nproc-per-node N -m r1kit sft --config sft.yaml

`python -m r1kit` opens the default process group (`process_group`) when torchrun started more than one
process and closes it when the command ends; it is the only place that does. Backends: gloo for CPU tensors,
NCCL for CUDA tensors (`cpu:gloo,cuda:nccl`), so small host-side reductions (token counts, metrics) and
sharded weights share one group. Every collective has a timeout (`R1KIT_DIST_TIMEOUT_S`, default 1800 s): a
rank that stops answering ends the job with an error instead of a hang (torchrun already ends the job, with the
failed rank's traceback, when a rank crashes).

Everything else takes a `Topology` (rank, world size, group) explicitly; single-process runs get
`Topology()` and every helper here is then a no-op (`torchrun --nproc-per-node 1` is a group of one: sharded,
which is how FSDP2 is checked on one GPU).

Data parallelism: the config states the global batch; `rank_share` gives each rank a contiguous, equal slice
of it. Models are sharded with FSDP2 (`fully_shard`) per transformer block (MoE experts included: they are
parameters of their block; MTP depths' blocks too) and at the root. Gradients are *summed* over ranks (divide factor
1), because the trainers' losses are already normalized by whole-step counts (`all_reduce_sum`): a rank's
loss is its share of the global objective, so the summed gradient is the gradient of the global objective,
exactly as one process computes it.

Left out: tensor, pipeline, context and expert parallelism (see docs/scaling.md), HSDP across nodes, CPU
offload, asynchronous checkpointing, float8 all-gathers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from r1kit.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0
# model methods the trainers call instead of forward: they gather the root's parameters, which stay gathered
# until the backward (so `lm_head` and `mtp_logits` may follow); registering `mtp_logits` too would reshard
# the root in the backward of the MTP branch while the main branch still needs it
FORWARD_METHODS = ("hidden",)


@dataclass(frozen=True)
class Topology:
    """Where this process sits: rank in [0, world_size), its GPU index on the node, the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, configs, plots and the exported model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A process group is open (torchrun): collectives run and models are sharded, even on one process."""
        return self.group is not None


def topology() -> Topology:
    """The topology of the default process group (opened by `process_group`), or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Topology()
    return Topology(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    dist.group.WORLD)


@contextlib.contextmanager
def process_group(timeout_s: float | None = None) -> Iterator[Topology]:
    """Open the default process group when started by torchrun (its environment sets WORLD_SIZE; one process
    is a group of one, sharded like N), and close it on exit, also on errors. Without torchrun, or when the
    caller opened a group, nothing is opened."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        yield topology()
        return
    timeout_s = timeout_s or float(os.environ.get("R1KIT_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    topo = topology()
    _log_with_rank(topo.rank)
    try:
        yield topo
    finally:
        dist.destroy_process_group()


def _log_with_rank(rank: int) -> None:
    """Prefix r1kit's log lines with the rank (the `r1kit` logger only; the application's root is left alone)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[rank{rank}] %(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("r1kit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# ---- the global batch ------------------------------------------------------------------------------------------

def rank_share(items: Sequence, topo: Topology, what: str = "batch.batch_size") -> list:
    """This rank's contiguous slice of a step's global batch (every rank the same size). `what` names the
    config field in the error when the batch does not split evenly."""
    n, w = len(items), topo.world_size
    if n % w:
        raise ConfigError(f"{what}: {n} does not split evenly over {w} processes; use a multiple of {w}")
    size = n // w
    return list(items[topo.rank * size:(topo.rank + 1) * size])


def all_reduce(values: Sequence[float], topo: Topology, op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of a few floats over ranks (float64 on the CPU, over gloo)."""
    if not topo.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=topo.group)
    return t.tolist()


def all_reduce_sum(values: Sequence[float], topo: Topology) -> list[float]:
    return all_reduce(values, topo, "sum")


def all_gather_objects(obj, topo: Topology) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if not topo.distributed:
        return [obj]
    out = [None] * topo.world_size
    dist.all_gather_object(out, obj, group=topo.group)
    return out


def barrier(topo: Topology) -> None:
    if topo.distributed:
        dist.barrier(group=topo.group)


def sync_expert_load(model: nn.Module, topo: Topology) -> None:
    """Sum the MoE layers' token-per-expert counts over ranks, so every rank applies the same router-bias
    update (the bias is a buffer: FSDP does not keep buffers in sync)."""
    if not topo.distributed or not hasattr(model, "moe_layers"):
        return
    for moe in model.moe_layers():
        dist.all_reduce(moe.expert_load, group=topo.group)


# ---- sharding ----------------------------------------------------------------------------------------------------

def shard_model(model: nn.Module, topo: Topology, param_dtype: torch.dtype | None = None,
                reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 in place: `fully_shard` each transformer block (of `layers` and of each MTP depth) and the root;
    returns the model.

    param_dtype: the all-gathered (compute) dtype of the parameters, e.g. bf16 on GPUs; gradients are reduced
    in fp32 and the sharded master weights stay fp32. Gradients are summed over ranks (see the module
    docstring). The model must already be on its device."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    device_type = next(model.parameters()).device.type
    mesh = torch.distributed.device_mesh.init_device_mesh(device_type, (topo.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    # MTP depths: their transformer block is a unit; their norms and projection belong to the root, as
    # `mtp_logits` uses a depth's final norm outside of the depth's forward
    blocks = [*getattr(model, "layers", []), *(m.block for m in getattr(model, "mtp", []))]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # the root (embedding, final norm, head) stays gathered from `hidden` until the backward: the trainers
    # call `model.hidden(...)` and then `model.lm_head(...)` outside of it
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    for module in fsdp_modules(model):
        module.set_gradient_divide_factor(1.0)  # sum: the losses carry the global normalizers
        module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    return model


def fsdp_modules(model: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    return bool(fsdp_modules(model))


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients in this backward (the last micro-batch of a step) or only accumulate them locally."""
    if not enabled and is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def full_state_dict(model: nn.Module, topo: Topology, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict; collective when sharded. By default only rank 0 gets it, on the
    CPU ({} on other ranks); `everywhere`: every rank gets it, on the model's device."""
    if not is_sharded(model):
        return {k: v.detach() if everywhere else v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))
    return full if everywhere or topo.is_main else {}


def plain_copy(model: nn.Module, topo: Topology, everywhere: bool = False) -> nn.Module | None:
    """An unsharded r1kit Transformer with the model's current weights (the model itself when it is not
    sharded); collective when sharded. By default on rank 0's CPU (None on other ranks); `everywhere`: on every
    rank, on the model's device (e.g. for an inference engine, which calls the model's cached-decode methods
    directly, outside FSDP's hooks)."""
    if not is_sharded(model):
        return model
    state = full_state_dict(model, topo, everywhere)
    if not state:
        return None
    from r1kit.models.checkpoint import build_model

    return build_model(model.config, state, device=next(iter(state.values())).device)


class RankEngine:
    """A rollout engine as one rank of a sharded policy uses it. The engine runs on an unsharded copy of the
    policy (`plain_copy(everywhere=True)`; `refresh()` after each optimizer step gathers the new weights into
    it), and this rank's request i is sampled with the seed of request `offset + i` of a single-process run,
    so N processes draw exactly the completions one process would. Anything else is the wrapped engine's.

    The copy costs one full model per rank: fine for models that fit a GPU twice; beyond that the rollout
    belongs in vLLM (weights pushed, `rollout_backend: vllm`)."""

    def __init__(self, make_engine, policy: nn.Module, topo: Topology, offset: int = 0):
        self.policy, self.topo, self.offset = policy, topo, offset
        self.model = plain_copy(policy, topo, everywhere=True).eval()
        self.engine = make_engine(self.model)

    def refresh(self) -> None:
        """Copy the policy's current weights (and router biases) into the engine's model (collective)."""
        with torch.no_grad():
            self.model.load_state_dict(full_state_dict(self.policy, self.topo, everywhere=True), strict=False)

    def _shift(self, params):
        if params is None or getattr(params, "seed", None) is None:
            return params
        return dataclasses.replace(params, seed=params.seed + self.offset)

    def generate(self, prompts, params=None, **kwargs):
        params = [self._shift(p) for p in params] if isinstance(params, list) else self._shift(params)
        return self.engine.generate(prompts, params, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


__all__ = ["RankEngine", "Topology", "all_gather_objects", "all_reduce", "all_reduce_sum", "barrier", "full_state_dict",
           "gradient_sync", "is_sharded", "plain_copy", "process_group", "rank_share",
           "shard_model", "sync_expert_load", "topology"]
