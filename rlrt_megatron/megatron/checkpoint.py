"""Training checkpoints (megatron-core distributed checkpointing) and HF exports, both atomic.

**Training checkpoints** hold the model, the optimizer (its fp32 main weights and Adam moments),
the LR/weight-decay scheduler and an opaque ``extra`` dict from the trainer (step, λ step, data
position, ...), plus optional per-rank ``rank_extra`` (e.g. RNG states). Tensors go through
megatron-core's ``dist_checkpointing`` (``torch_dist`` backend): every rank writes its own shards
of *global* tensors, so a checkpoint written at one TP/PP/DP layout loads at another. The
distributed optimizer uses megatron-core's ``fully_reshardable`` format (optimizer state
gathered over DP and stored per model parameter), which reshards over TP, PP and DP. Tested on
gloo: saved at DP=2 and loaded at TP=2, PP=2 and one rank, saved at TP=2 and loaded on one rank;
weights are bit-identical after loading and the next optimizer step matches the uninterrupted
run. Cost of that format: during a save every rank holds, for a moment, the full optimizer state
of its TP/PP shard (gathered over DP).

Layout of a run directory (must be on a file system every rank sees)::

    run_dir/
      step_00000010/           a complete checkpoint (dist_checkpointing files + rlrt_meta.json)
      step_00000020/
      latest                   text file: "step_00000020"
      .incomplete-step_00000030/   a save in progress, or one that was interrupted

A save writes into ``.incomplete-step_N``, and only after every rank has finished does rank 0
write ``rlrt_meta.json`` into it, rename it to ``step_N`` and then replace ``latest`` (write to a
temporary file, fsync, ``os.replace``). A crash at any point leaves either the previous
``latest`` or the new one, never a half-written directory that :func:`find_latest` would accept:
it only returns directories named ``step_N`` that contain ``rlrt_meta.json``.

**HF exports** (:func:`export_hf_folder`) write the current weights as HF safetensors (sharded
above ``max_shard_bytes``, with ``model.safetensors.index.json``), the source checkpoint's
``config.json`` (with the written dtype) and tokenizer / generation files: the layout that
transformers and vLLM read (tested with transformers). Also written into a temporary sibling
and renamed when complete.

**Nothing in a checkpoint is executed when it is loaded.** The trainer's ``extra`` and per-rank
state are JSON (:mod:`~rlrt_megatron.megatron.safe_state`); format-1 checkpoints' ``extra.pt``
files are read through torch's restricted unpickler only; megatron-core reads ``common.pt`` the
same way (torch's ``weights_only`` default), and torch.distributed.checkpoint's ``.metadata``,
which torch unpickles freely, is dry-run through an allow-list first (:func:`check_dcp_metadata`).
A crafted file is refused with :class:`UnsafeCheckpointError`.

HF exports replace their target folder, so they refuse a folder that holds the source model or
anything but an earlier export (:func:`check_output_folder`; exports carry ``rlrt_export.json``).

Most functions here are collective: every rank of the model-parallel world calls them. Finding
checkpoints and checking their files (no megatron-core, no process group: what a driver runs
before any rank starts) live in :mod:`~rlrt_megatron.megatron.checkpoint_files`; their names are
importable from here too.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rlrt_megatron.atomic_files import atomic_write_text, fsync_dir
from rlrt_megatron.megatron.checkpoint_files import (  # noqa: F401  (public names re-exported)
    CHECKPOINT_FORMAT_VERSION,
    DCP_METADATA_FILE,
    EXTRA_FILE,
    HF_SUBDIR,
    INCOMPLETE_PREFIX,
    LATEST_FILE,
    LEGACY_EXTRA_FILE,
    META_FILE,
    RANK_EXTRA_DIR,
    READABLE_FORMAT_VERSIONS,
    CheckpointLoadError,
    UnsafeCheckpointError,
    _load_extra_state,
    _read_state_file,
    check_dcp_metadata,
    find_latest,
    find_loadable,
    is_complete_checkpoint,
    list_checkpoints,
    read_meta,
    resolve_hf_model,
    resolve_resume,
    step_dir_name,
    verify_checkpoint_files,
)
from rlrt_megatron.megatron.safe_state import save_state

# The distributed optimizer's reshardable format: TP, PP and DP may all change between save and
# load. (`dp_reshardable` is faster but only allows a DP change; `fully_sharded_model_space`
# fails in megatron-core 0.16.1: "ShardedTensor.flattened_range is not supported".)
DISTRIB_OPTIM_SHARDING_TYPE = "fully_reshardable"
# Weight files that are never copied from the source checkpoint into an HF export.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
_WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Written into every HF export: marks a folder that a later export may replace. Any other
# non-empty folder is refused as an export target (it is someone's data).
EXPORT_MARKER = "rlrt_export.json"


class OutputFolderError(ValueError):
    """An output folder that writing (and replacing) would destroy data in."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` restored besides the model/optimizer/scheduler state.

    Attributes:
        path: the checkpoint directory.
        step: the step it was saved at.
        extra: the ``extra`` dict passed to :func:`save_checkpoint` (rank 0's).
        rank_extra: this rank's ``rank_extra`` from the save, or ``None`` when the checkpoint was
            written at another world size (per-rank state such as RNG streams has no meaning
            then) or none was saved.
        meta: the contents of ``rlrt_meta.json`` (layout at save time, format version, ...).
    """

    path: Path
    step: int
    extra: dict[str, Any]
    rank_extra: dict[str, Any] | None
    meta: dict[str, Any] = field(repr=False)


def capture_rng_state() -> dict[str, Any]:
    """This rank's random-number state, for ``save_checkpoint(rank_extra=...)``: Python's,
    NumPy's, torch's CPU (and CUDA) generators and megatron's tracked model-parallel streams
    (dropout / init per TP rank)."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "megatron_tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (on the same rank of the same layout)."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron_tracker"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


RNG_KEY = "rng"
"""The key of a rank's RNG state (`capture_rng_state`) in its ``rank_extra``."""


def restore_rank_rng(loaded: LoadedCheckpoint) -> bool:
    """Put this rank's RNG state saved in ``loaded`` (``rank_extra["rng"]``) back; True if done.

    Only at the layout it was saved at (world size, TP, PP, CP, DP all equal): the state of rank
    *i* belongs to rank *i*'s place in the TP/PP/DP grid (megatron seeds the model-parallel
    stream per TP rank and expects the default generator equal across a TP group), so at another
    layout the ranks keep the streams seeded at start-up. Collective-free; call it on every rank
    after `load_checkpoint`."""
    state = (loaded.rank_extra or {}).get(RNG_KEY)
    if state is None or loaded.meta.get("layout") != _layout():
        return False
    restore_rng_state(state)
    return True


# ---------------------------------------------------------------------------------------------
# Saving and loading training checkpoints.
# ---------------------------------------------------------------------------------------------


# megatron-core 0.16.1 code on the checkpoint path that needs adjusting here, with the same
# mechanisms and checks as rlrt_megatron.megatron.compat (each literal must occur exactly as often
# as expected, else a clear error naming what changed):
# * CPU only (where compat is applied): the writer calls `torch.cuda.synchronize()` before
#   copying tensors out, and the saver's failure / metadata-reuse reductions allocate on
#   `torch.cuda.current_device()`: these modules' `torch` is redirected to compat's CPU stand-in;
#   the distributed optimizer moves each DP shard of its state to CUDA before gathering it for
#   the `fully_reshardable` format.
# * Without Apex / Transformer Engine (torch's Adam, CPU or GPU): torch's Adam keeps a per-param
#   `step` tensor that the `fully_reshardable` loader tries to copy from the checkpoint, which
#   has none (the step is restored from the param groups by `load_state_dict`): KeyError 'step'.
_CPU_CHECKPOINT_MODULES = (
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
)
_CPU_CHECKPOINT_PATCHES = (
    (
        "megatron.core.optimizer.distrib_optimizer",
        "DistributedOptimizer.get_parameter_state_dp_zero",
        [("send_tensor = send_tensor.cuda()", "send_tensor = send_tensor", 1)],
    ),
)
_TORCH_ADAM_PATCHES = (
    (
        "megatron.core.optimizer.distrib_optimizer",
        "DistributedOptimizer._set_main_param_and_optimizer_states",
        [
            (
                'dst_tensors = {"param": main_param, **optim_state}',
                'dst_tensors = {"param": main_param, '
                '**{k: v for k, v in optim_state.items() if k != "step"}}',
                1,
            )
        ],
    ),
)


def _apply_checkpoint_compat() -> None:
    from megatron.core.optimizer import distrib_optimizer

    from rlrt_megatron.megatron import compat

    if compat.is_cpu_compat_applied():
        for module_name in _CPU_CHECKPOINT_MODULES:
            compat._bind_cpu_torch(importlib.import_module(module_name))
        for patch in _CPU_CHECKPOINT_PATCHES:
            compat._apply_source_patch(*patch)
    if not distrib_optimizer.HAVE_APEX_OR_TE:
        for patch in _TORCH_ADAM_PATCHES:
            compat._apply_source_patch(*patch)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sharded_state_dict(model: Any, optimizer: Any, *, is_loading: bool) -> dict[str, Any]:
    """The sharded state dict of the model chunks and, if given, the optimizer.

    Model keys come from the unwrapped ``GPTModel`` (no DDP / Float16Module prefixes), so the
    checkpoint does not depend on how the model was wrapped.
    """
    modules = model.modules
    state: dict[str, Any] = {}
    if len(modules) == 1:
        state["model"] = modules[0].sharded_state_dict()
    else:
        for index, module in enumerate(modules):
            state[f"model{index}"] = module.sharded_state_dict()
    if optimizer is not None:
        model_sd = {}
        for key in sorted(k for k in state if k.startswith("model")):
            model_sd.update(state[key])
        state["optimizer"] = optimizer.sharded_state_dict(
            model_sd,
            is_loading=is_loading,
            metadata={
                "distrib_optim_sharding_type": DISTRIB_OPTIM_SHARDING_TYPE,
                "chained_optim_avoid_prefix": True,
            },
        )
    return state


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as mpu

    return {
        "world_size": dist.get_world_size(),
        "tensor_parallel": mpu.get_tensor_model_parallel_world_size(),
        "pipeline_parallel": mpu.get_pipeline_model_parallel_world_size(),
        "context_parallel": mpu.get_context_parallel_world_size(),
        "data_parallel": mpu.get_data_parallel_world_size(),
    }


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    *,
    extra: dict[str, Any] | None = None,
    rank_extra: dict[str, Any] | None = None,
    keep_last: int | None = None,
    _before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Save a training checkpoint atomically as ``run_dir/step_N`` and point ``latest`` at it.

    Collective: every rank calls it with its own shards. Returns the checkpoint directory.

    Args:
        run_dir: the run's checkpoint directory (shared by all ranks), created if missing.
        step: the training step (names the directory; a re-save of a step replaces it).
        model: a :class:`~rlrt_megatron.models.qwen3_megatron.Qwen3MegatronModel`.
        optimizer: the megatron optimizer from
            :func:`~rlrt_megatron.megatron.optimizer.build_optimizer` (or ``None``).
        scheduler: its ``OptimizerParamScheduler`` (or ``None``).
        extra: trainer state (dicts, lists, tuples, numbers, strings, tensors, NumPy arrays:
            :mod:`~rlrt_megatron.megatron.safe_state`); rank 0's copy is saved as JSON.
        rank_extra: per-rank state of the same kinds (e.g. RNG states), saved for every rank.
        keep_last: if set, delete older complete checkpoints so that this many remain.
        _before_commit: test hook called on every rank after the shards are written and before
            the commit (to simulate a crash).
    """
    from megatron.core import dist_checkpointing

    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    run_dir = Path(run_dir)
    name = step_dir_name(step)
    final = run_dir / name
    staging = run_dir / f"{INCOMPLETE_PREFIX}{name}"
    rank = _rank()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if staging.exists():  # left by an interrupted save of the same step
            shutil.rmtree(staging)
        staging.mkdir(parents=True)  # dist_checkpointing.save wants an existing, empty directory
    _barrier()

    _apply_checkpoint_compat()
    state = _sharded_state_dict(model, optimizer, is_loading=False)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()  # plain values: saved once, in common.pt
    dist_checkpointing.save(state, str(staging))
    if rank == 0:
        save_state(dict(extra or {}), staging / EXTRA_FILE)
    if rank_extra is not None:
        (staging / RANK_EXTRA_DIR).mkdir(exist_ok=True)
        save_state(dict(rank_extra), staging / RANK_EXTRA_DIR / f"rank_{rank:05d}.json")
    if _before_commit is not None:
        _before_commit(staging)
    _barrier()  # every rank's files are written

    if rank == 0:
        meta = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "step": step,
            "layout": _layout(),
            "has_optimizer": optimizer is not None,
            "has_scheduler": scheduler is not None,
            "has_rank_extra": rank_extra is not None,
            "distrib_optim_sharding_type": DISTRIB_OPTIM_SHARDING_TYPE,
            "saved_at_unix": time.time(),
        }
        atomic_write_text(staging / META_FILE, json.dumps(meta, indent=2))
        _replace_dir(staging, final)
        atomic_write_text(run_dir / LATEST_FILE, name + "\n")
        if keep_last is not None:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()  # nobody returns before the checkpoint is committed
    return final


def load_checkpoint(
    path: str | Path,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    *,
    strict: bool = True,
) -> LoadedCheckpoint:
    """Load a checkpoint written by :func:`save_checkpoint`, at this process's layout.

    Collective. The model (and optimizer) must be built for the current layout first; the saved
    layout may differ in TP, PP and DP. Loading an optimizer needs a checkpoint that has one.
    With ``strict`` a key missing from the checkpoint is an error, and so is one left unused
    (except the optimizer's, when ``optimizer`` is ``None``: a weights-only load).
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    if not is_complete_checkpoint(path):
        raise CheckpointLoadError(
            f"{path} is not a complete checkpoint (a step_N directory with {META_FILE})"
        )
    meta = read_meta(path)
    if optimizer is not None and not meta["has_optimizer"]:
        raise CheckpointLoadError(f"{path} has no optimizer state (saved with optimizer=None)")
    if scheduler is not None and not meta["has_scheduler"]:
        raise CheckpointLoadError(f"{path} has no scheduler state (saved with scheduler=None)")

    # Every file that would be unpickled is checked before megatron-core reads any of them.
    extra = _load_extra_state(path, meta)
    check_dcp_metadata(path)
    _apply_checkpoint_compat()
    if optimizer is not None:
        _materialize_optimizer_state(optimizer)
    sharded = _sharded_state_dict(model, optimizer, is_loading=True)
    if not meta["has_optimizer"]:
        sharded.pop("optimizer", None)
    # Loading the model alone from a full checkpoint leaves the optimizer tensors unrequested:
    # expected, so only missing keys are an error then. (The scheduler's state is in common.pt
    # and comes back whether or not it is requested.)
    partial = meta["has_optimizer"] and optimizer is None
    if not strict:
        strict_handling = "log_all"
    else:
        strict_handling = "log_unexpected" if partial else "raise_all"
    loaded = dist_checkpointing.load(sharded, str(path), strict=strict_handling)
    modules = model.modules
    for index, module in enumerate(modules):
        key = "model" if len(modules) == 1 else f"model{index}"
        module.load_state_dict(loaded[key], strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_steps(optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])

    rank_extra = None
    same_world = meta["layout"]["world_size"] == (
        dist.get_world_size() if dist.is_initialized() else 1
    )
    if meta["has_rank_extra"] and same_world:
        rank_extra = _read_state_file(path / RANK_EXTRA_DIR, f"rank_{_rank():05d}", meta)
    return LoadedCheckpoint(
        path=path, step=int(meta["step"]), extra=extra, rank_extra=rank_extra, meta=meta
    )


def _materialize_optimizer_state(optimizer: Any) -> None:
    """Give a fresh distributed optimizer its Adam state tensors before loading into them.

    Its ``state_dict()`` (which the sharded state dict starts from) reads each parameter's
    ``step``, which torch's Adam creates on the first step only; loading then copies the saved
    moments and fp32 weights into these tensors in place. megatron-core's own helper runs one
    step with zero gradients (weight decay moves the fp32 main weights, but the load overwrites
    all of them). Non-distributed megatron optimizers initialize their state in
    ``sharded_state_dict(is_loading=True)`` themselves.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(inner, DistributedOptimizer) and len(inner.optimizer.state) == 0:
            inner._init_optimizer_states_with_dummy_values()


def _unshare_adam_steps(optimizer: Any) -> None:
    """Give every parameter its own torch-Adam ``step`` tensor after a load.

    Without Apex / Transformer Engine, megatron-core 0.16.1's ``DistributedOptimizer.
    load_state_dict`` assigns one ``step`` tensor object to every parameter's state; torch's Adam
    increments each parameter's step in place, so the shared tensor advanced once per parameter
    per step and the bias correction of the next update was wrong (seen here: the first step
    after a resume differed from the uninterrupted run by ~lr/5).
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        if torch_optimizer is None:
            continue
        for state in torch_optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


# ---------------------------------------------------------------------------------------------
# HF export.
# ---------------------------------------------------------------------------------------------

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def export_hf_folder(
    model: Any,
    out_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 4 * 1024**3,
) -> Path:
    """Write the model's current weights as a Hugging Face checkpoint folder, atomically.

    Collective: every rank drains the (TP/PP-gathering) weight exporter in the same order; rank 0
    writes. The weights go to safetensors files of at most ``max_shard_bytes`` each (one file:
    ``model.safetensors``; several: ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``). ``config.json`` (its dtype set to the written one) and the
    non-weight files of ``source_dir`` (tokenizer, generation config, chat template) are copied.

    Args:
        model: a :class:`~rlrt_megatron.models.qwen3_megatron.Qwen3MegatronModel`.
        out_dir: the folder to create; an existing one is replaced only once the new one is
            complete, and only if it is empty or an earlier export (it holds ``rlrt_export.json``):
            see :func:`check_output_folder`.
        source_dir: the HF folder to copy config/tokenizer files from (default: the checkpoint
            the model was built from).
        dtype: cast the weights to this dtype (default: the model's parameter dtype).
        max_shard_bytes: the largest safetensors file to write.
    """
    from safetensors.torch import save_file

    from rlrt_megatron.models.qwen3_megatron import export_hf_weights

    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(_DTYPE_NAMES)}, got {dtype}")
    if max_shard_bytes < 1:
        raise ValueError("max_shard_bytes must be positive")
    out_dir = Path(out_dir)
    source_dir = Path(source_dir) if source_dir is not None else Path(model.checkpoint.path)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"{source_dir} has no config.json to copy into the HF export")
    staging = out_dir.parent / f"{INCOMPLETE_PREFIX}{out_dir.name}"
    rank = _rank()
    if rank == 0:
        check_output_folder(out_dir, source_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()

    # Rank 0 buffers up to one shard; shard files get their final names once the count is known.
    shard_files: list[tuple[Path, list[str]]] = []
    buffer: dict[str, torch.Tensor] = {}
    buffered = 0
    total_bytes = 0
    written_dtype = None

    def flush() -> None:
        nonlocal buffer, buffered
        if buffer:
            file = staging / f"part-{len(shard_files):05d}.safetensors"
            save_file(buffer, str(file), metadata={"format": "pt"})
            shard_files.append((file, list(buffer)))
            buffer, buffered = {}, 0

    for name, tensor in export_hf_weights(model):  # every rank drains it: collectives inside
        if rank != 0:
            continue
        tensor = tensor.to(dtype) if dtype is not None else tensor
        written_dtype = tensor.dtype
        # Own, contiguous CPU memory: safetensors refuses shared storage, and a TP=1 export can
        # yield live parameters.
        tensor = tensor.detach().to("cpu", copy=True).contiguous()
        size = tensor.numel() * tensor.element_size()
        if buffer and buffered + size > max_shard_bytes:
            flush()
        buffer[name] = tensor
        buffered += size
        total_bytes += size
    if rank == 0:
        flush()
        _finish_hf_folder(staging, shard_files, total_bytes, written_dtype, source_dir)
        _replace_dir(staging, out_dir)
    _barrier()
    return out_dir


def _finish_hf_folder(
    staging: Path,
    shard_files: list[tuple[Path, list[str]]],
    total_bytes: int,
    dtype: torch.dtype | None,
    source_dir: Path,
) -> None:
    count = len(shard_files)
    if count == 1:
        shard_files[0][0].rename(staging / "model.safetensors")
    else:
        weight_map = {}
        for index, (file, names) in enumerate(shard_files, start=1):
            final_name = f"model-{index:05d}-of-{count:05d}.safetensors"
            file.rename(staging / final_name)
            weight_map.update(dict.fromkeys(names, final_name))
        index_doc = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (staging / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))

    for item in source_dir.iterdir():
        if not item.is_file() or item.name in _WEIGHT_INDEX_FILES or item.name == EXPORT_MARKER:
            continue
        if item.name.endswith(_WEIGHT_SUFFIXES) or item.name == "config.json":
            continue
        shutil.copy2(item, staging / item.name)
    config = json.loads((source_dir / "config.json").read_text())
    if dtype is not None:
        # transformers >= 4.56 writes "dtype", older versions "torch_dtype"; both read either.
        # Update whichever keys the source has (adding "torch_dtype" if it has neither).
        keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
        for key in keys:
            config[key] = _DTYPE_NAMES[dtype]
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    marker = {"written_by": "rlrt_megatron export_hf_folder", "source": str(source_dir)}
    (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def check_output_folder(out_dir: str | Path, *sources: str | Path) -> None:
    """Refuse an export target whose replacement would destroy data: a folder that is, or
    contains, one of ``sources``; an existing file; a non-empty folder that is not an earlier
    export (no ``rlrt_export.json``). Raises :class:`OutputFolderError` naming the folder."""
    out = Path(out_dir).resolve()
    for source in sources:
        source = Path(source).resolve()
        if source == out or out in source.parents:
            raise OutputFolderError(
                f"{out_dir}: refusing to write there: it contains the source {source} (the "
                "export replaces the whole folder)"
            )
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out_dir}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        found = sorted(p.name for p in out.iterdir())
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise OutputFolderError(
            f"{out_dir}: refusing to replace a non-empty folder that is not an earlier export "
            f"(no {EXPORT_MARKER}; holds {shown}); choose a new or empty folder"
        )


# ---------------------------------------------------------------------------------------------
# File-system helpers (rank 0 only).
# ---------------------------------------------------------------------------------------------


def _replace_dir(staging: Path, final: Path) -> None:
    """Rename the complete ``staging`` directory to ``final``; an existing ``final`` is moved
    aside first and deleted only after the rename (a directory cannot be replaced in one step)."""
    fsync_dir(staging)
    trash = None
    if final.exists():
        trash = final.with_name(f"{INCOMPLETE_PREFIX}replaced-{final.name}-{os.getpid()}")
        final.rename(trash)
    staging.rename(final)
    fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
