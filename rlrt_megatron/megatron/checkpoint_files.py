"""The files of a training checkpoint: their layout, finding checkpoints in a run folder, and
checking — without loading a tensor or executing anything — that one would load.

Split from :mod:`~rlrt_megatron.megatron.checkpoint` (which saves and loads, collectively, with
megatron-core) so that the checks a driver runs before any rank starts (`rlrt train`'s
preflight, ``resume=auto`` picking the newest intact checkpoint, `rlrt eval` resolving a model
folder) need neither megatron-core nor a process group. Every name here is also importable from
``rlrt_megatron.megatron.checkpoint``.

Layout and atomicity: see the checkpoint module's docstring. Safety: a checkpoint's JSON state
is read with :mod:`~rlrt_megatron.megatron.safe_state`; format-1 ``extra.pt`` files through
torch's restricted unpickler; torch.distributed.checkpoint's ``.metadata`` (a pickle torch
reads freely) only after a dry run through an allow-list (:func:`check_dcp_metadata`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from rlrt_megatron.megatron.safe_state import (
    UnsafeStateError,
    check_pickle,
    load_legacy_torch_file,
    load_state,
)

# Format 2 keeps the trainer's extra / per-rank state as JSON (safe_state); format 1 kept it as
# torch pickles, which are still read, through torch's restricted unpickler only.
CHECKPOINT_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
META_FILE = "rlrt_meta.json"
LATEST_FILE = "latest"
EXTRA_FILE = "extra.json"
LEGACY_EXTRA_FILE = "extra.pt"  # format 1
DCP_METADATA_FILE = ".metadata"  # torch.distributed.checkpoint's index (a plain pickle)
RANK_EXTRA_DIR = "rank_extra"
INCOMPLETE_PREFIX = ".incomplete-"
HF_SUBDIR = "hf"  # a checkpoint's HF export of the policy weights (trainer.save_hf)
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


class CheckpointLoadError(RuntimeError):
    """A checkpoint directory is missing, incomplete, or does not fit what is being loaded."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint file would run code (or name objects outside the allow-list) if loaded."""


def step_dir_name(step: int) -> str:
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return f"step_{step:08d}"


# ---------------------------------------------------------------------------------------------
# Finding checkpoints.
# ---------------------------------------------------------------------------------------------


def is_complete_checkpoint(path: str | Path) -> bool:
    """True for a committed checkpoint directory: named ``step_N`` and holding ``rlrt_meta.json``
    (written last, just before the rename)."""
    path = Path(path)
    return bool(_STEP_DIR.match(path.name)) and (path / META_FILE).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of ``run_dir``, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names if it is complete, else the
    highest complete ``step_N`` (the pointer can lag one rename behind after a crash), else
    ``None``."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST_FILE
    candidates = list_checkpoints(run_dir)
    if pointer.is_file():
        named = run_dir / pointer.read_text().strip()
        if is_complete_checkpoint(named):
            newest = candidates[-1] if candidates else named
            # A crash between the directory rename and the pointer update leaves a newer
            # complete checkpoint than the pointer names: it is complete, so prefer it.
            return newest if _step_of(newest) > _step_of(named) else named
    return candidates[-1] if candidates else None


def resolve_resume(run_dir: str | Path, resume: str | Path | None) -> Path | None:
    """Interpret a ``resume`` setting: ``None`` / ``"never"`` / ``"none"`` → start fresh;
    ``"auto"`` → the latest complete checkpoint of ``run_dir`` (``None`` if there is none);
    anything else → that checkpoint directory, which must be complete."""
    if resume is None or str(resume) in ("never", "none"):
        return None
    if str(resume) == "auto":
        return find_latest(run_dir)
    path = Path(resume)
    if not is_complete_checkpoint(path):
        raise CheckpointLoadError(
            f"resume={str(resume)!r} is not a complete checkpoint directory (expected a "
            f"step_N directory containing {META_FILE}); use resume='auto' to pick the latest"
        )
    return path


def verify_checkpoint_files(path: str | Path) -> None:
    """Check, without loading any tensor, that a checkpoint would load: complete, a readable
    format, its extra state readable (and safe), its ``.metadata`` safe, every byte range the
    metadata lists present in its shard files. Raises :class:`CheckpointLoadError` (or
    :class:`UnsafeCheckpointError`) naming the problem."""

    path = Path(path)
    if not path.exists():
        raise CheckpointLoadError(f"{path}: no such checkpoint directory")
    if not is_complete_checkpoint(path):
        raise CheckpointLoadError(
            f"{path} is not a complete checkpoint (a step_N directory with {META_FILE})"
        )
    meta = read_meta(path)
    _load_extra_state(path, meta)
    for name in (DCP_METADATA_FILE, "common.pt"):
        if not (path / name).is_file():
            raise CheckpointLoadError(f"{path}: {name} is missing")
    metadata = check_dcp_metadata(path)  # read by the allow-list unpickler, never plain pickle
    try:
        storage = metadata.storage_data or {}
    except Exception as error:
        raise CheckpointLoadError(f"{path / DCP_METADATA_FILE}: unreadable ({error})") from None
    needed: dict[str, int] = {}
    for info in storage.values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        file = path / name
        if not file.is_file():
            raise CheckpointLoadError(f"{path}: shard file {name} is missing")
        if file.stat().st_size < end:
            raise CheckpointLoadError(
                f"{path}: shard file {name} is truncated ({file.stat().st_size} bytes, "
                f"{end} expected)"
            )


def find_loadable(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint of ``run_dir`` that passes :func:`verify_checkpoint_files`
    (``None`` if none does), and the newer ones passed over, each with the reason."""
    skipped: list[tuple[Path, str]] = []
    for candidate in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint_files(candidate)
        except CheckpointLoadError as error:
            skipped.append((candidate, str(error)))
            continue
        return candidate, skipped
    return None, skipped


def resolve_hf_model(path: str | Path) -> Path:
    """The HF model folder that ``path`` designates, for commands that load weights for
    inference (`rlrt eval`, `rlrt analyze`).

    Accepts an HF folder (it holds ``config.json``), a training checkpoint ``step_N`` (→ its
    ``hf/`` export, written when ``trainer.save_hf`` is on), a run's ``checkpoints/`` folder or
    a run folder (→ the ``hf/`` export of its latest complete checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointLoadError(f"{path}: no such file or directory")
    if (path / "config.json").is_file():
        return path
    if is_complete_checkpoint(path):
        checkpoint = path
    else:
        checkpoints = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        checkpoint = find_latest(checkpoints)
        if checkpoint is None:
            raise CheckpointLoadError(
                f"{path}: neither a HF model folder (no config.json) nor a run or checkpoint "
                f"folder (no complete step_N checkpoint found)"
            )
    hf = checkpoint / HF_SUBDIR
    if not (hf / "config.json").is_file():
        if (checkpoint / f"{INCOMPLETE_PREFIX}{HF_SUBDIR}").exists():
            raise CheckpointLoadError(
                f"{checkpoint}: the checkpoint's HF export was interrupted; resuming the run "
                f"(trainer.resume=auto) writes it again"
            )
        raise CheckpointLoadError(
            f"{checkpoint}: the checkpoint has no HF export ({HF_SUBDIR}/config.json): it was "
            f"written with trainer.save_hf=false (or its export never started); resuming the "
            f"run with trainer.save_hf=true writes it"
        )
    return hf


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def read_meta(path: str | Path) -> dict[str, Any]:
    """``rlrt_meta.json`` of a checkpoint, checked to be a format this code reads."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointLoadError(f"{path / META_FILE}: unreadable ({error})") from None
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointLoadError(
            f"{path}: checkpoint format {version} is not one this version reads "
            f"{list(READABLE_FORMAT_VERSIONS)}"
        )
    return meta


def _read_state_file(folder: Path, stem: str, meta: dict[str, Any]) -> Any:
    """``stem.json`` (format 2) or, for a format-1 checkpoint, ``stem.pt`` through torch's
    restricted unpickler; ``None`` if the file is absent. Never executes code from the file."""
    try:
        if meta["format_version"] >= 2:
            file = folder / f"{stem}.json"
            return load_state(file) if file.is_file() else None
        file = folder / f"{stem}.pt"
        return load_legacy_torch_file(file) if file.is_file() else None
    except UnsafeStateError as error:
        raise UnsafeCheckpointError(str(error)) from None


def _load_extra_state(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    extra = _read_state_file(path, Path(EXTRA_FILE).stem, meta)
    if extra is None:
        name = EXTRA_FILE if meta["format_version"] >= 2 else LEGACY_EXTRA_FILE
        raise CheckpointLoadError(f"{path}: {name} is missing (an incomplete checkpoint)")
    if not isinstance(extra, dict):
        raise UnsafeCheckpointError(f"{path}: the extra state is not a mapping")
    return extra


# Plain constructors / look-ups the metadata pickle names besides torch.distributed.checkpoint's
# dataclasses and enums (checked with torch 2.13: storage paths, layouts by name).
_DCP_METADATA_FUNCTIONS = {
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("torch.serialization", "_get_layout"),
}


def _dcp_metadata_global_allowed(module: str, name: str) -> bool:
    """The globals torch.distributed.checkpoint's ``.metadata`` pickle may name: its own
    dataclasses and enums, torch's Size / dtype / layout / memory-format values and
    ``_DCP_METADATA_FUNCTIONS``."""
    import dataclasses
    import enum
    import importlib

    if (module, name) in _DCP_METADATA_FUNCTIONS:
        return True
    if module == "torch":
        value = getattr(torch, name, None)
        return value is torch.Size or isinstance(
            value, (torch.dtype, torch.layout, torch.memory_format)
        )
    if module.startswith("torch.distributed.checkpoint."):
        value = getattr(importlib.import_module(module), name, None)
        return isinstance(value, type) and (
            dataclasses.is_dataclass(value) or issubclass(value, enum.Enum)
        )
    return False


def check_dcp_metadata(path: str | Path) -> Any:
    """Refuse a checkpoint whose ``.metadata`` (which torch reads with plain ``pickle.load``)
    names anything but checkpoint-metadata classes; returns the metadata, read by the
    restricted unpickler (``None`` when the file is missing)."""
    file = Path(path) / DCP_METADATA_FILE
    if not file.is_file():
        return None  # dist_checkpointing reports the missing index itself
    try:
        return check_pickle(file, _dcp_metadata_global_allowed)
    except UnsafeStateError as error:
        raise UnsafeCheckpointError(str(error)) from None
