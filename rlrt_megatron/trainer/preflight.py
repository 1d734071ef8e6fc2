"""Everything about a run that can be checked before a process starts, checked in one pass.

`preflight` runs before Ray, the engines or the trainer ranks exist (the CLI calls it first,
`train` again), so a wrong setting costs seconds instead of the minutes a start-up takes on a
cluster. Each problem is a :class:`PreflightError` whose one-line message names the config key
or file; ``rlrt train`` prints it without a traceback and exits with status 2 (a user error).

Checked: the numeric ranges of the settings; the component configs built from them (each
component's own checks); the model folder (a dense Qwen3 ``config.json``,
weights present, every safetensors header readable and its data complete, tokenizer files);
the actor's TP/PP and the engines' TP against the heads, KV heads and layers; the reward name;
a C++ compiler for ``actor.compile_elementwise`` on CPU;
the data files (present, readable, not empty); the run folder and resume target (a fresh start
over existing checkpoints is refused unless ``trainer.overwrite``; ``resume=auto`` picks the
newest checkpoint whose files are intact, naming those it skips and why).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrt_megatron.configuration import ConfigError

logger = logging.getLogger(__name__)

FRESH_START = ("never", "none")
"""``trainer.resume`` values that start from the model, ignoring checkpoints ("none": alias)."""


class PreflightError(ConfigError):
    """A run setting or input file that cannot work; the message names the key or file."""


@dataclass
class Preflight:
    """What the checks found, for `train` to act on."""

    resume_from: Path | None = None
    """The checkpoint to resume from (None: a fresh start)."""
    skipped_checkpoints: list[tuple[Path, str]] = field(default_factory=list)
    """Newer checkpoints ``resume=auto`` passed over, with the reason."""
    clear_run_folder: bool = False
    """``trainer.overwrite``: the run folder's previous outputs are to be deleted first."""


# ---------------------------------------------------------------------------------------------
# Numeric ranges.
# ---------------------------------------------------------------------------------------------

_Check = tuple[str, Callable[[Any], bool], str]


def _at_least(n: float) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _positive(v: Any) -> bool:
    return v > 0


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


# (dotted key, predicate, what it must be). rollouts_per_prompt >= 2: a GRPO group of one
# sample has a zero advantage (Eq. 1 normalises by the group), so nothing would be learned.
RANGES: tuple[_Check, ...] = (
    ("trainer.steps", _at_least(1), ">= 1"),
    ("trainer.save_every", _at_least(1), ">= 1"),
    ("trainer.keep_last", _optional(_at_least(1)), ">= 1 (or null to keep all)"),
    ("data.prompts_per_step", _at_least(1), ">= 1"),
    ("data.rollouts_per_prompt", _at_least(2), ">= 2 (a group of one has no advantage)"),
    ("data.max_prompt_tokens", _positive, "> 0"),
    ("rollout.max_response_tokens", _positive, "> 0"),
    ("rollout.num_engines", _at_least(1), ">= 1"),
    ("rollout.tensor_parallel", _at_least(1), ">= 1"),
    ("rollout.temperature", lambda v: 0 < v <= 2, "in (0, 2]"),
    ("rollout.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("rollout.top_k", _at_least(-1), ">= -1 (0 or -1: off)"),
    ("rollout.gpu_memory_utilization", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("rollout.cpus_per_engine", _positive, "> 0"),
    ("rollout.bucket_bytes", _at_least(1), ">= 1"),
    ("eval.every", _at_least(0), ">= 0 (0: only before and after training)"),
    ("eval.n", _at_least(1), ">= 1"),
    ("eval.temperature", lambda v: 0 <= v <= 2, "in [0, 2]"),
    ("eval.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("eval.top_k", _at_least(-1), ">= -1 (0 or -1: off)"),
    ("eval.max_response_tokens", _positive, "> 0"),
    ("actor.data_parallel", _at_least(1), ">= 1"),
    ("actor.max_tokens", _positive, "> 0"),
    ("actor.mini_batches", _at_least(1), ">= 1"),
    ("actor.ema_rate", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("actor.recompute_num_layers", _at_least(1), ">= 1"),
    ("actor.cpus_per_rank", _positive, "> 0"),
    ("actor.gpus_per_rank", _at_least(0), ">= 0"),
    ("actor.optimizer.lr", _optional(_positive), "> 0 (or null: the method's default)"),
    ("actor.optimizer.warmup_steps", _at_least(0), ">= 0"),
    ("actor.optimizer.weight_decay", _at_least(0), ">= 0"),
    ("actor.optimizer.clip_grad", _positive, "> 0"),
    ("actor.optimizer.eps", _positive, "> 0"),
    ("reward.num_workers", _at_least(1), ">= 1"),
    ("reward.timeout_s", _positive, "> 0"),
    ("reward.memory_limit_mb", _optional(_positive), "> 0 (or null: unlimited)"),
    ("reward.startup_timeout_s", _positive, "> 0"),
)


def _get(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_ranges(config: Any) -> None:
    for key, ok, wanted in RANGES:
        value = _get(config, key)
        if not ok(value):
            raise PreflightError(f"{key}={value!r}: must be {wanted}")
    if config.data.prompts_per_step * config.data.rollouts_per_prompt < config.actor.mini_batches:
        raise PreflightError(
            f"actor.mini_batches={config.actor.mini_batches}: more mini-batches than the "
            f"{config.data.prompts_per_step * config.data.rollouts_per_prompt} rollouts of a step "
            "(data.prompts_per_step x data.rollouts_per_prompt)"
        )


def check_components(config: Any) -> None:
    """Build every component config the run will build (`rlrt_megatron.trainer.stack`), so that
    a value only a component checks (e.g. ``actor.optimizer.min_lr`` above the method's default
    learning rate) fails here, naming the component's field."""
    from rlrt_megatron.trainer.stack import component_configs

    try:
        component_configs(config)
    except ValueError as error:
        raise PreflightError(f"invalid setting: {error}") from error


# ---------------------------------------------------------------------------------------------
# Model folder and layout.
# ---------------------------------------------------------------------------------------------


def check_safetensors_file(path: Path) -> None:
    """The safetensors header parses and the file holds every byte the header promises (a
    truncated download or copy fails here, not in a rank minutes later)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length > size - 8:
                raise ValueError(f"header length {length} exceeds the file ({size} bytes)")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as error:
        raise PreflightError(f"{path}: not a readable safetensors file ({error})") from None
    end = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise PreflightError(
            f"{path}: truncated safetensors file ({size} bytes, the header describes "
            f"{8 + length + end})"
        )


def check_model(config: Any) -> None:
    from rlrt_megatron.models.qwen3_checkpoint import CheckpointError, Qwen3Checkpoint

    path = Path(config.model.path)
    try:
        model = Qwen3Checkpoint.from_folder(path)
    except CheckpointError as error:
        raise PreflightError(f"model.path: {error}") from None
    except (KeyError, ValueError) as error:  # config.json without a field, or not JSON
        raise PreflightError(f"model.path: {path}/config.json: unreadable ({error})") from None
    for file in model.weight_files:
        check_safetensors_file(file)
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        raise PreflightError(
            f"model.path: {path} has no tokenizer files (tokenizer.json / tokenizer_config.json)"
        )
    parallel = config.actor.parallel
    try:
        model.check_layout(parallel.tensor_parallel, parallel.pipeline_parallel)
    except CheckpointError as error:
        raise PreflightError(
            f"actor.parallel: {error.args[0].split(': ', 1)[-1]} of {path}"
        ) from None
    if config.rollout.backend == "in_rank":
        # No engine, so its layout does not matter; the ranks' decoder implements what the
        # checkpoint check above accepts (plain-RoPE Qwen3, no sliding window).
        return
    rollout_tp = config.rollout.tensor_parallel
    if model.num_attention_heads % rollout_tp:
        raise PreflightError(
            f"rollout.tensor_parallel={rollout_tp} does not divide num_attention_heads="
            f"{model.num_attention_heads} of {path}"
        )
    kv = model.num_key_value_heads
    if kv % rollout_tp and rollout_tp % kv:  # vLLM splits or replicates whole KV heads
        raise PreflightError(
            f"rollout.tensor_parallel={rollout_tp} and num_key_value_heads={kv} of {path}: "
            "one must divide the other"
        )


def check_reward(config: Any) -> None:
    from rlrt_megatron.rewards.registry import get_reward

    try:
        get_reward(config.reward.name)
    except ValueError as error:
        raise PreflightError(f"reward.name: {error}") from None


def check_compiler(config: Any) -> None:
    """``actor.compile_elementwise`` on CPU ranks: Inductor builds C++ kernels, so a C++
    compiler must exist (checked on this node, where the ranks of a local run start)."""
    if not config.actor.compile_elementwise or config.actor.gpus_per_rank:
        return
    candidates = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
    if not any(shutil.which(c) for c in candidates):
        raise PreflightError(
            "actor.compile_elementwise=true on CPU ranks needs a C++ compiler (torch.compile "
            f"builds C++ kernels there): none of {', '.join(candidates)} is on PATH; install "
            "one or set actor.compile_elementwise=false"
        )


def check_data_files(config: Any) -> None:
    groups = (
        ("data.train_files", config.data.train_files),
        ("data.eval_files", config.data.eval_files),
    )
    if not config.data.train_files:
        raise PreflightError("data.train_files: no file given")
    for key, files in groups:
        for index, name in enumerate(files):
            path = Path(name)
            where = f"{key}[{index}]: {path}"
            if not path.exists():
                raise PreflightError(f"{where}: no such file")
            if not path.is_file():
                raise PreflightError(f"{where}: not a file")
            try:
                with open(path, "rb") as handle:
                    first = handle.read(1)
            except OSError as error:
                raise PreflightError(f"{where}: not readable ({error.strerror})") from None
            if not first:
                raise PreflightError(f"{where}: the file is empty")


# ---------------------------------------------------------------------------------------------
# Run folder and resume target.
# ---------------------------------------------------------------------------------------------

# What a run writes into its folder; trainer.overwrite deletes these (and nothing else).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "eval_before.json", "summary.json", "tensorboard")


def check_resume(config: Any) -> Preflight:
    from rlrt_megatron.megatron.checkpoint import (
        CheckpointLoadError,
        find_loadable,
        list_checkpoints,
        verify_checkpoint_files,
    )

    run_dir = Path(config.trainer.run_dir)
    checkpoints = run_dir / "checkpoints"
    resume = str(config.trainer.resume)
    overwrite = config.trainer.overwrite
    existing = list_checkpoints(checkpoints)
    if resume in FRESH_START:
        if existing and not overwrite:
            raise PreflightError(
                f"trainer.run_dir={run_dir} holds checkpoints (newest {existing[-1].name}) and "
                f"trainer.resume={resume} starts fresh: set trainer.resume=auto to continue that "
                "run, trainer.overwrite=true to delete it first, or choose another run_dir"
            )
        return Preflight(clear_run_folder=overwrite)
    if overwrite:
        raise PreflightError(
            f"trainer.overwrite=true needs trainer.resume=never (with resume={resume} a requeued "
            "job would delete the checkpoints it should resume from)"
        )
    if resume == "auto":
        found, skipped = find_loadable(checkpoints)
        if found is None and skipped:  # starting fresh would mix a new run into the old folder
            reasons = "; ".join(f"{path.name}: {reason}" for path, reason in skipped)
            raise PreflightError(
                f"trainer.resume=auto: no checkpoint in {checkpoints} loads ({reasons}); remove "
                "them, or start over with trainer.resume=never trainer.overwrite=true"
            )
        return Preflight(resume_from=found, skipped_checkpoints=skipped)
    path = Path(resume)
    try:
        verify_checkpoint_files(path)
    except CheckpointLoadError as error:
        raise PreflightError(f"trainer.resume: {error}") from None
    return Preflight(resume_from=path)


def clear_run_outputs(run_dir: Path) -> list[str]:
    """Delete a previous run's outputs from ``run_dir`` (``trainer.overwrite``); returns what
    was deleted. Other files in the folder are left alone."""
    removed = []
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


# ---------------------------------------------------------------------------------------------
# The pass.
# ---------------------------------------------------------------------------------------------


def preflight(config: Any) -> Preflight:
    """Check ``config`` (a `RunConfig`) and its inputs; raise :class:`PreflightError` on the
    first problem. Starts nothing and writes nothing."""
    check_ranges(config)
    check_components(config)
    check_reward(config)
    check_compiler(config)
    check_data_files(config)
    check_model(config)
    result = check_resume(config)
    for path, reason in result.skipped_checkpoints:
        logger.warning("resume=auto: skipping %s: %s", path, reason)
    return result
