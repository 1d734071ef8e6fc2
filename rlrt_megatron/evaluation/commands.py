"""``rlrt eval`` and ``rlrt compare`` (registered with the CLI when this module is imported)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rlrt_megatron.command_registry import register_command
from rlrt_megatron.errors import CommandError
from rlrt_megatron.evaluation.runner import (
    PAPER_MAX_TOKENS,
    PAPER_TEMPERATURE,
    PAPER_TOP_K,
    PAPER_TOP_P,
)


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="HF folder, training checkpoint step_N, or run folder (its latest checkpoint)",
    )
    parser.add_argument(
        "--data", required=True, nargs="+", help="benchmark files (.jsonl / .parquet)"
    )
    parser.add_argument("--output", required=True, type=Path, help="output folder (resumable)")
    parser.add_argument(
        "--config",
        type=Path,
        help="a run config (e.g. configs/paper/qwen3_8b_no_think/rlrt.yaml): its "
        "model.enable_thinking and eval section (n, temperature, top_p, top_k, "
        "max_response_tokens) become the defaults of the options below",
    )
    paper = "(default: --config's, else %s, the paper's evaluation setting)"
    parser.add_argument("--n", type=int, help=paper % 16)
    parser.add_argument("--max-tokens", type=int, help=paper % PAPER_MAX_TOKENS)
    parser.add_argument("--temperature", type=float, help=paper % PAPER_TEMPERATURE)
    parser.add_argument("--top-p", type=float, help=paper % PAPER_TOP_P)
    parser.add_argument("--top-k", type=int, help=paper % PAPER_TOP_K)
    parser.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Qwen3 chat template enable_thinking (default: --config's model.enable_thinking, "
        "else the run's own config.yaml when --model is a run or its checkpoint, else the "
        "template's default; the paper's Qwen3-8B runs use --no-thinking)",
    )
    parser.add_argument("--seed", type=int, default=0, help="problem i is sampled with seed+i")
    parser.add_argument(
        "--ks", type=int, nargs="+", help="pass@k abscissae (default 1, 2, 4, ..., n)"
    )
    parser.add_argument("--label", help="checkpoint name in the table and plot")
    parser.add_argument(
        "--overlay",
        nargs="+",
        default=[],
        type=Path,
        help="other `rlrt eval` output folders to add to the table and pass@k plot",
    )
    parser.add_argument("--reward", default="math", help="registered reward (default math)")
    parser.add_argument("--reward-workers", type=int, default=2)
    parser.add_argument("--engines", type=int, default=1, help="vLLM engines (default 1)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size of each engine")
    parser.add_argument("--dtype", default="auto", help="vLLM dtype (auto, bfloat16, float32)")
    parser.add_argument("--max-model-len", type=int, help="default: longest prompt + max tokens")
    parser.add_argument("--cpus-per-engine", type=float, default=1.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument(
        "--chunk-size", type=int, default=32, help="problems per generate call and append"
    )
    parser.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray cluster")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_config_path(model_folder: Path) -> Path | None:
    """The ``config.yaml`` of the run that wrote ``model_folder``, when it is a training
    checkpoint's HF export (``<run>/checkpoints/step_N/hf``) and the run saved one; else None."""
    step = model_folder.parent
    if model_folder.name != "hf" or not step.name.startswith("step_"):
        return None
    if step.parent.name != "checkpoints":
        return None
    path = step.parent.parent / "config.yaml"
    return path if path.is_file() else None


def eval_settings(args: argparse.Namespace, run: Any | None, trained: Any | None) -> dict:
    """The sampling settings of an evaluation, each from the first that gives it: the command
    line, ``run`` (``--config``: its eval section and model.enable_thinking), ``trained`` (the
    evaluated run's own config: its model.enable_thinking only, the chat template it trained
    with), the paper's evaluation setting."""
    values = {
        "n": 16,
        "temperature": PAPER_TEMPERATURE,
        "top_p": PAPER_TOP_P,
        "top_k": PAPER_TOP_K,
        "max_tokens": PAPER_MAX_TOKENS,
        "enable_thinking": None,
    }
    if trained is not None:
        values["enable_thinking"] = trained.model.enable_thinking
    if run is not None:
        e = run.eval
        values.update(
            n=e.n,
            temperature=e.temperature,
            top_p=e.top_p,
            top_k=e.top_k,
            max_tokens=e.max_response_tokens,
            enable_thinking=run.model.enable_thinking,
        )
    given = {
        "n": args.n,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_tokens": args.max_tokens,
        "enable_thinking": args.thinking,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    return values


def _run_configs(args: argparse.Namespace) -> tuple[Any | None, Any | None]:
    """(``--config``'s run config or None, the evaluated run's own config or None)."""
    from rlrt_megatron.megatron.checkpoint import CheckpointLoadError, resolve_hf_model
    from rlrt_megatron.trainer.config import load_run_config

    run = load_run_config(args.config) if args.config is not None else None
    try:
        own = run_config_path(resolve_hf_model(args.model))
    except CheckpointLoadError:
        own = None  # evaluate_model reports the bad model path
    return run, (load_run_config(own) if own is not None else None)


def _run_eval(args: argparse.Namespace) -> int:
    from rlrt_megatron.configuration import ConfigError
    from rlrt_megatron.evaluation.benchmarks import BenchmarkError
    from rlrt_megatron.evaluation.evaluate import EngineSettings, evaluate_model
    from rlrt_megatron.evaluation.model import ModelFolderError
    from rlrt_megatron.evaluation.runner import EvalConfig
    from rlrt_megatron.evaluation.store import ResumeError

    try:
        config = EvalConfig(
            **eval_settings(args, *_run_configs(args)),
            seed=args.seed,
            reward=args.reward,
        )
        engine = EngineSettings(
            num_engines=args.engines,
            tensor_parallel=args.tp,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            cpus_per_engine=args.cpus_per_engine,
            gpu_memory_utilization=args.gpu_memory_utilization,
        )
        results = evaluate_model(
            args.model,
            args.data,
            args.output,
            config,
            engine=engine,
            label=args.label,
            ks=args.ks,
            overlays=args.overlay,
            chunk_size=args.chunk_size,
            reward_workers=args.reward_workers,
            ray_address=args.ray_address,
            num_cpus=args.num_cpus,
            progress=not args.no_progress,
        )
    except (
        BenchmarkError,
        ConfigError,
        ModelFolderError,
        ResumeError,
        FileNotFoundError,
        ValueError,
    ) as e:
        raise CommandError(str(e)) from None
    print((args.output / "results.md").read_text(), end="")
    print(json.dumps({"output": str(args.output), "benchmarks": list(results["benchmarks"])}))
    return 0


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML, or a quickstart config (quickstart:)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides applied to every run (quickstart.* too); put them right after "
        "CONFIG, before the options",
    )
    parser.add_argument(
        "--methods", default="grpo,rlrt", help="comma-separated methods (default grpo,rlrt)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 per method")
    parser.add_argument(
        "--output", type=Path, default=Path("runs/compare"), help="comparison folder"
    )


def _run_compare(args: argparse.Namespace) -> int:
    from rlrt_megatron.configuration import ConfigError
    from rlrt_megatron.trainer.compare import run_compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        table = run_compare(args.config, methods, args.seeds, args.output, args.overrides)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from None
    print(table.read_text(), end="")
    return 0


register_command(
    "eval",
    "avg@n / pass@k of a checkpoint on benchmark files (vLLM engines, math-verify grading); "
    "resumable",
    _add_eval_arguments,
    _run_eval,
)
register_command(
    "compare",
    "train every method x seed on one task and budget, then tabulate and plot them",
    _add_compare_arguments,
    _run_compare,
)
