"""Crash-safe training checkpoints and the run directory layout.

    run_dir/
      config.yaml             resolved config (atomic write)
      metrics.jsonl           one line per optimizer step (see metrics.py)
      samples.jsonl
      checkpoints/
        step-00000100/        what the trainers write (format 2, `save_sharded_checkpoint`):
          dcp/                torch.distributed.checkpoint: {"model", "optimizer"}, sharded as the run was
          hf/                 config.json + tokenizer, no weights (`r1kit export` completes it from dcp/)
          scheduler.pt        scheduler.state_dict()
          rng_state.pt        rank 0's python, numpy, torch (and CUDA) RNG states, plus named torch.Generators
          trainer_state.json  step, world size, data-order state, extra; written last: marks it complete
        step-00000050/        format 1 (`save_checkpoint`, one process): model/ (whatever the caller's
                              `save_model_fn(dir)` writes; r1kit: HF safetensors) and optimizer.pt instead of dcp/

Atomicity: a checkpoint is assembled in a hidden `.tmp-*` directory, every file is fsynced, and the directory
is renamed to `step-N` in one `rename` (atomic on POSIX). Old checkpoints are renamed to `.trash-*` before
being deleted. So whenever the process is killed, `latest_checkpoint` returns a complete checkpoint or None,
never a partial one; leftovers of an interrupted save are ignored and swept by the next save. With several
processes every rank writes its shards into the same `.tmp-*` directory (a filesystem all ranks share) and
rank 0 renames it once all have finished.

Resharding: DCP stores each tensor with its global shape and the pieces each rank held, so a checkpoint
saved by N processes loads into M processes (or one unsharded process) and the optimizer state follows its
parameters. RNG: all ranks are seeded alike and the data order is a pure function of (seed, step), so rank
0's RNG state is the run's.

The .pt files hold only tensors and plain Python values and are read back with
`torch.load(weights_only=True)`, which refuses arbitrary pickled objects.

Left out: async saving, cloud storage, per-rank RNG streams.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from r1kit.errors import CheckpointError
from r1kit.io import atomic_write_json, atomic_write_text
from r1kit.training.metrics import METRICS_FILE, SAMPLES_FILE, truncate_after_step

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"
FORMAT_VERSION = 1  # save_checkpoint: model/ + optimizer.pt
SHARDED_FORMAT_VERSION = 2  # save_sharded_checkpoint: dcp/ + hf/
DCP_DIR = "dcp"
HF_META_DIR = "hf"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """What `load_checkpoint` read: the step, the caller's data-order state and extra fields."""

    path: Path
    step: int
    data_state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every global RNG's state (and the named generators'), as tensors and plain values."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore what `rng_state` captured; named generators are restored in place."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise CheckpointError(f"checkpoint has no state for generator {name!r}")
        g.set_state(state["generators"][name])


# ---------------------------------------------------------------------------------------------- save / find
def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under root, so a rename never publishes data still in the page cache."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Delete a directory so that no kill can leave it half-deleted under its real name."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def _sweep_leftovers(root: Path) -> None:
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    save_model_fn: Callable[[Path], None],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    data_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Write `run_dir/checkpoints/step-N` atomically, then keep only the newest `keep_last` (None: all).

    save_model_fn(dir) writes the weights into `dir` (an existing empty directory). data_state and extra must
    be JSON-serializable (e.g. the sampler's epoch and position). Returns the checkpoint directory.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{checkpoint_name(step)}-", dir=root))
    try:
        (tmp / MODEL_DIR).mkdir()
        save_model_fn(tmp / MODEL_DIR)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        torch.save(rng_state(generators), tmp / RNG_FILE)
        state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "data_state": dict(data_state or {}),
            "extra": dict(extra or {}),
        }
        atomic_write_json(tmp / STATE_FILE, state)  # last: marks completeness
        _fsync_tree(tmp)
        final = root / checkpoint_name(step)
        if final.exists():  # re-saving a step (e.g. after a resume): the old copy goes first, atomically
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            _discard(old)
    return final


def _is_complete(path: Path) -> bool:
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("step") == int(_NAME.match(path.name).group(1))


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (partial or foreign directories are ignored)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and _is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of the run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------------- load
def _load_tensors(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path.parent} has no {path.name}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    load_model_fn: Callable[[Path], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore what `save_checkpoint` wrote into the given objects (load the model before the optimizer).

    load_model_fn(model_dir) loads the weights (the caller's format); optimizer and scheduler load their
    state dicts; global RNGs and the named generators are restored when restore_rng. Returns the step and
    the data-order state, from which the loop continues with step + 1.
    """
    path = Path(path)
    if not path.is_dir() or not _NAME.match(path.name) or not _is_complete(path):
        raise CheckpointError(f"{path} is not a complete checkpoint (no valid {STATE_FILE})")
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("format_version") == SHARDED_FORMAT_VERSION:
        raise CheckpointError(f"{path}: a sharded checkpoint; load it with load_sharded_checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / STATE_FILE}: unsupported format_version {state.get('format_version')}"
        )
    if load_model_fn is not None:
        load_model_fn(path / MODEL_DIR)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(_load_tensors(path / OPTIMIZER_FILE))
        except ValueError as e:  # e.g. parameter groups of another size
            raise CheckpointError(f"{path / OPTIMIZER_FILE} does not fit this optimizer: {e}") from None
    if scheduler is not None:
        scheduler.load_state_dict(_load_tensors(path / SCHEDULER_FILE))
    if restore_rng:
        set_rng_state(_load_tensors(path / RNG_FILE), generators)
    return Checkpoint(path, state["step"], state.get("data_state", {}), state.get("extra", {}))


# ------------------------------------------------------------------------------------------- sharded (DCP)
def checkpoint_format(path: str | os.PathLike) -> int:
    """The format_version of a complete checkpoint (1: model/ + optimizer.pt, 2: sharded dcp/)."""
    path = Path(path)
    if not path.is_dir() or not _NAME.match(path.name) or not _is_complete(path):
        raise CheckpointError(f"{path} is not a complete checkpoint (no valid {STATE_FILE})")
    return int(json.loads((path / STATE_FILE).read_text(encoding="utf-8")).get("format_version", 0))


def _model_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """{"model", "optimizer"} keyed by parameter names (DTensor shards when the model is sharded)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


@contextlib.contextmanager
def _single_process_quiet(topo):
    """DCP warns that it runs without a process group; for one process that is the intent."""
    with warnings.catch_warnings():
        if not topo.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None = None,
    topo=None,
    write_metadata: Callable[[Path], None] | None = None,
    data_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Write `run_dir/checkpoints/step-N` (format 2) atomically; every rank of `topo` calls it (collective).

    Model and optimizer state go through torch.distributed.checkpoint, each rank writing its own shards;
    rank 0 writes the rest: `write_metadata(dir)` (r1kit: the HF config and tokenizer into `hf/`), the
    scheduler, its RNG state and the completion marker, then renames the directory into place."""
    import torch.distributed.checkpoint as dcp

    from r1kit.training.distributed import Topology, barrier

    topo = topo or Topology()
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    root = Path(run_dir) / CHECKPOINTS_DIR
    tmp = root / f".tmp-{checkpoint_name(step)}"  # one name every rank agrees on
    if topo.is_main:
        root.mkdir(parents=True, exist_ok=True)
        _sweep_leftovers(root)
        tmp.mkdir()
    barrier(topo)
    final = root / checkpoint_name(step)
    try:
        with _single_process_quiet(topo):
            dcp.save(_model_optimizer_state(model, optimizer), checkpoint_id=tmp / DCP_DIR,
                     process_group=topo.group)
        barrier(topo)
        if topo.is_main:
            if write_metadata is not None:
                (tmp / HF_META_DIR).mkdir()
                write_metadata(tmp / HF_META_DIR)
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
            torch.save(rng_state(generators), tmp / RNG_FILE)
            state = {"format_version": SHARDED_FORMAT_VERSION, "step": step, "world_size": topo.world_size,
                     "data_state": dict(data_state or {}), "extra": dict(extra or {})}
            atomic_write_json(tmp / STATE_FILE, state)  # last: marks completeness
            _fsync_tree(tmp)
            if final.exists():  # re-saving a step (e.g. after a resume): the old copy goes first, atomically
                _discard(final)
            os.rename(tmp, final)
            _fsync_dir(root)
            if keep_last is not None:
                for old in list_checkpoints(run_dir)[:-keep_last]:
                    _discard(old)
    except BaseException:
        if topo.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier(topo)
    return final


def load_sharded_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    topo=None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore a format-2 checkpoint into a model (sharded or not, at any number of processes) and its
    optimizer; every rank calls it. Returns the step and data-order state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    from r1kit.training.distributed import Topology

    topo = topo or Topology()
    path = Path(path)
    if checkpoint_format(path) != SHARDED_FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a sharded (format 2) checkpoint")
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    target = _model_optimizer_state(model, optimizer)
    if optimizer is not None:  # parameters that never had a gradient (e.g. MTP under GRPO) have no saved state
        saved = dcp.FileSystemReader(path / DCP_DIR).read_metadata().state_dict_metadata
        states = target["optimizer"]["state"]
        for name in [n for n in states if not any(f"optimizer.state.{n}.{k}" in saved for k in states[n])]:
            del states[name]
    try:
        with _single_process_quiet(topo):
            dcp.load(target, checkpoint_id=path / DCP_DIR, process_group=topo.group)
    except (CheckpointException, RuntimeError, ValueError, KeyError) as e:  # a tensor missing or of another shape: name the checkpoint
        raise CheckpointError(f"{path / DCP_DIR} does not fit this model/optimizer: {e}") from None
    if optimizer is None:
        set_model_state_dict(model, target["model"])
    else:
        # strict=False: only for the optimizer states dropped above (dcp.load was strict about every tensor)
        set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"],
                       options=StateDictOptions(strict=False))
    if scheduler is not None:
        scheduler.load_state_dict(_load_tensors(path / SCHEDULER_FILE))
    if restore_rng:
        set_rng_state(_load_tensors(path / RNG_FILE), generators)
    return Checkpoint(path, state["step"], state.get("data_state", {}), state.get("extra", {}))


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint path or a run directory (its latest checkpoint)."""
    path = Path(source)
    if (path / STATE_FILE).exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint directory nor a run directory with checkpoints")
    return latest


def export_checkpoint(source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the model of a checkpoint (or of a run directory's latest checkpoint) as an HF safetensors
    directory with its tokenizer, which transformers and `load_model` read. One process, no process group:
    the sharded weights of any number of ranks are assembled on the CPU."""
    import torch.distributed.checkpoint as dcp

    from r1kit.models.checkpoint import build_model, load_model, save_model
    from r1kit.models.config import load_hf_config
    from r1kit.models.transformer import Transformer
    from r1kit.training.distributed import Topology

    path = resolve_checkpoint(source)
    if checkpoint_format(path) == FORMAT_VERSION:  # model/ is already an HF directory
        model, meta = load_model(path / MODEL_DIR), path / MODEL_DIR
    else:
        meta = path / HF_META_DIR
        cfg = load_hf_config(meta)
        with torch.device("meta"):
            shapes = Transformer(cfg).state_dict()
        state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()}
        if cfg.tie_embeddings:
            state.pop("lm_head.weight", None)
        with _single_process_quiet(Topology()):
            dcp.load({"model": state}, checkpoint_id=path / DCP_DIR)
        model = build_model(cfg, state)
    tokenizer = None
    if (meta / "tokenizer_config.json").exists():
        from r1kit.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(str(meta))
    return save_model(model, out, tokenizer=tokenizer)


# -------------------------------------------------------------------------------------------------- run dir
def _plain(obj: Any) -> Any:
    """Config values as YAML-safe plain types (dataclasses, tuples and paths included)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


@dataclass(frozen=True)
class RunDir:
    """A training run's output directory (layout in the module docstring)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def write_config(self, config: Any) -> Path:
        """Write the resolved config (a mapping or a dataclass) as YAML, atomically."""
        text = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
        return atomic_write_text(self.config_path, text)

    def read_config(self) -> dict[str, Any] | None:
        if not self.config_path.exists():
            return None
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8"))

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    def prepare_resume(self, step: int) -> None:
        """Drop metrics and samples of steps after `step` (0 when no checkpoint): they will be recomputed."""
        truncate_after_step(self.metrics_path, step)
        truncate_after_step(self.samples_path, step)
