"""``rlrt plan CONFIG [key=value ...]``: the layout, per-GPU memory and time a run config implies.

Nothing is started and no GPU is needed: run it on a login node before submitting. The model's
shape comes from ``model.path``/config.json when the checkpoint is there, else from the built-in
Qwen3 table (:mod:`rlrt_megatron.launch.shapes`). A layout that cannot work (sizes that do not
divide heads or layers, GPU counts that do not add up, memory over the GPU's) is refused with the
reasons and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math

import yaml

from rlrt_megatron.command_registry import register_command
from rlrt_megatron.errors import CommandError, ConfigError
from rlrt_megatron.launch.plan import GB, Assumptions, Cluster, Plan, Workload, make_plan
from rlrt_megatron.launch.shapes import ShapeError, resolve_shape


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="run config YAML (e.g. configs/paper/qwen3_8b_base/rlrt.yaml)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for rlrt train")
    parser.add_argument(
        "--nodes", type=int, default=None, help="nodes (default: what the layout needs)"
    )
    parser.add_argument("--gpus-per-node", type=int, default=8, help="default 8")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="default 80 (H100)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 per GPU (default H100 989)"
    )
    parser.add_argument("--hbm-tb-s", type=float, default=3.35, help="default 3.35 (H100 SXM)")
    parser.add_argument(
        "--context-parallel",
        type=int,
        default=None,
        help="CP of the actor (default: the config's actor.parallel.context_parallel)",
    )
    parser.add_argument(
        "--recompute",
        choices=("full", "none"),
        default=None,
        help="activation recomputation to assume instead of the config's actor.recompute"
        " (selective counts as none: with fused attention it keeps the same activations)",
    )
    parser.add_argument("--mfu", type=float, default=0.40, help="training MFU (default 0.40)")
    parser.add_argument(
        "--mean-response-fraction",
        type=float,
        default=0.5,
        help="mean response length / rollout.max_response_tokens (default 0.5)",
    )
    parser.add_argument("--full-config", action="store_true", help="print the whole config")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def workload_from_config(config, context_parallel: int | None = None) -> Workload:
    """The sizes :func:`make_plan` needs, from a RunConfig (``context_parallel`` overrides the
    config's ``actor.parallel.context_parallel``)."""
    actor, rollout = config.actor, config.rollout
    return Workload(
        tp=actor.parallel.tensor_parallel,
        pp=actor.parallel.pipeline_parallel,
        cp=actor.parallel.context_parallel if context_parallel is None else context_parallel,
        dp=actor.data_parallel,
        sequence_parallel=actor.sequence_parallel,
        packing=actor.packing,
        param_bytes=actor.dtype.itemsize,
        micro_batch_tokens=actor.max_tokens,
        prompts_per_step=config.data.prompts_per_step,
        rollouts_per_prompt=config.data.rollouts_per_prompt,
        mini_batches=actor.mini_batches,
        max_prompt_tokens=config.data.max_prompt_tokens,
        max_response_tokens=rollout.max_response_tokens,
        needs_teacher=config.algorithm.spec.needs_teacher,
        engines=rollout.num_engines,
        engine_tp=rollout.tensor_parallel,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        placement=rollout.placement,
    )


def plan_from_args(args: argparse.Namespace) -> tuple[object, Plan, str]:
    """(RunConfig, Plan, where the model shape came from); CommandError on bad input."""
    from rlrt_megatron.trainer.config import load_run_config

    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as error:
        raise CommandError(str(error)) from None
    try:
        shape, source = resolve_shape(config.model.path)
    except ShapeError as error:
        raise CommandError(str(error)) from None
    for flag in ("gpus_per_node", "context_parallel"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise CommandError(f"--{flag.replace('_', '-')} must be >= 1")
    workload = workload_from_config(config, args.context_parallel)
    needed = workload.tp * workload.pp * workload.cp * workload.dp
    needed += workload.engines * workload.engine_tp
    nodes = args.nodes if args.nodes is not None else max(1, math.ceil(needed / args.gpus_per_node))
    if nodes < 1:
        raise CommandError("--nodes must be >= 1")
    cluster = Cluster(
        nodes=nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_memory_gb=args.gpu_memory_gb,
        peak_tflops=args.peak_tflops,
        hbm_tb_s=args.hbm_tb_s,
    )
    assumptions = Assumptions(
        recompute=args.recompute or ("full" if config.actor.recompute == "full" else "none"),
        train_mfu=args.mfu,
        mean_response_fraction=args.mean_response_fraction,
    )
    return config, make_plan(shape, workload, cluster, assumptions), source


def _gb(value: float) -> str:
    return f"{value / GB:7.1f} GB"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def format_plan(config, plan: Plan, source: str, full_config: bool = False) -> str:
    """The plan as the command prints it."""
    from rlrt_megatron.configuration import to_dict

    s, w, c, a, n = plan.shape, plan.workload, plan.cluster, plan.assumptions, plan.numbers
    lines = []
    if full_config:
        lines += ["resolved config:", yaml.safe_dump(to_dict(config), sort_keys=False)]
    lines += [
        f"config        {config.model.path}  method {config.algorithm.method}  "
        f"lr {config.lr:g}  steps {config.trainer.steps}  run_dir {config.trainer.run_dir}",
        f"model         {s.name} ({source}): {s.total_params / 1e9:.2f}B params, hidden "
        f"{s.hidden}, {s.layers} layers, {s.heads} heads / {s.kv_heads} KV heads × {s.head_dim},"
        f" FFN {s.intermediate}, vocab {s.vocab}{' (tied)' if s.tied else ''}",
        f"batch         {w.prompts_per_step} prompts × {w.rollouts_per_prompt} rollouts, "
        f"{w.mini_batches} mini-batches; prompt ≤ {w.max_prompt_tokens}, response ≤ "
        f"{w.max_response_tokens} tokens; micro-batch {w.micro_batch_tokens} "
        f"{'real tokens (packed)' if w.packing else 'padded tokens'}",
        "",
        "layout",
        f"  cluster     {c.nodes} nodes × {c.gpus_per_node} GPUs ({c.gpu_memory_gb:g} GB) = "
        f"{c.nodes * c.gpus_per_node} GPUs",
        f"  actor       TP {w.tp} × PP {w.pp} × CP {w.cp} × DP {w.dp} = {plan.actor_gpus} GPUs"
        f"{', sequence parallel' if w.sequence_parallel else ''}; padded vocab "
        f"{plan.padded_vocab}",
        f"  rollout     {w.engines} vLLM engines × TP {w.engine_tp} = {plan.rollout_gpus} GPUs, "
        f"gpu_memory_utilization {w.gpu_memory_utilization}",
        f"  placement   {w.placement}",
    ]
    if plan.actor_memory.parts:
        lines += ["", f"actor memory per GPU (first pipeline stage, {c.gpu_memory_gb:g} GB)"]
        lines += [f"  {k:<38}{_gb(v)}" for k, v in plan.actor_memory.parts.items()]
        lines += [f"  {'total':<38}{_gb(plan.actor_memory.total)}"]
        lines += ["", "vLLM engine memory per GPU"]
        lines += [f"  {k:<38}{_gb(v)}" for k, v in plan.engine_memory.parts.items()]
        lines += [
            f"  KV cache holds {plan.kv_tokens_per_engine} tokens per engine "
            f"({plan.kv_tokens_per_engine // (w.max_prompt_tokens + w.max_response_tokens)} "
            "full-length sequences)"
        ]
    if n:
        lines += [
            "",
            "per step (rough)",
            f"  sequences   {n['sequences']}; mean prompt {n['mean_prompt_tokens']:.0f} + "
            f"response {n['mean_response_tokens']:.0f} tokens (assumed)",
            f"  tokens      {n['tokens'] / 1e6:.1f} M ({n['generated_tokens'] / 1e6:.1f} M "
            f"generated, {n['teacher_tokens'] / 1e6:.1f} M teacher)",
            f"  rollout     {_duration(n['rollout_s'])} (decode ~"
            f"{n['decode_tokens_per_s']:.0f} tokens/s, "
            f"{n['concurrent_sequences_per_engine']:.0f} sequences per engine)",
            f"  training    {_duration(n['train_s'])} ({n['train_flops'] / 1e15:.0f} PFLOP)",
            f"  weight sync {_duration(n['sync_s'])}",
            f"  step        {_duration(n['step_s'])}; {config.trainer.steps} steps ≈ "
            f"{n['step_s'] * config.trainer.steps / 3600:.1f} h",
        ]
    lines += [
        "",
        "assumptions",
        f"  {c.peak_tflops:g} TFLOP/s dense bf16 per GPU at {a.train_mfu:.0%} MFU for training; "
        f"decoding bandwidth-bound at {a.decode_bandwidth_efficiency:.0%} of {c.hbm_tb_s} TB/s",
        f"  activation recomputation: {a.recompute}"
        + (
            f" (actor.recompute: {config.actor.recompute})"
            if (a.recompute == "full") == (config.actor.recompute == "full")
            else f" (--recompute, overriding actor.recompute: {config.actor.recompute})"
        ),
        "  distributed optimizer (Adam state sharded over DP·CP); teacher weights offloaded to "
        "CPU; weight sync at "
        f"{a.sync_gb_s:g} GB/s; {a.runtime_overhead_gb:g} GB runtime overhead per actor GPU",
    ]
    if not w.packing:
        lines.append(
            "  padded micro-batches: each sequence padded halfway from the mean to the longest"
        )
    return "\n".join(lines)


def plan_json(config, plan: Plan, source: str) -> dict:
    w = plan.workload
    return {
        "model": plan.shape.name,
        "shape_source": source,
        "params": plan.shape.total_params,
        "nodes": plan.cluster.nodes,
        "gpus_per_node": plan.cluster.gpus_per_node,
        "actor": {
            "tp": w.tp,
            "pp": w.pp,
            "cp": w.cp,
            "dp": w.dp,
            "gpus": plan.actor_gpus,
            "packing": w.packing,
        },
        "rollout": {"engines": w.engines, "tp": w.engine_tp, "gpus": plan.rollout_gpus},
        "placement": w.placement,
        "actor_memory_gb": {k: v / GB for k, v in plan.actor_memory.parts.items()},
        "actor_memory_total_gb": plan.actor_memory.total / GB,
        "engine_memory_gb": {k: v / GB for k, v in plan.engine_memory.parts.items()},
        "kv_tokens_per_engine": plan.kv_tokens_per_engine,
        "step": plan.numbers,
        "recompute": plan.assumptions.recompute,
        "problems": plan.problems,
    }


def run_plan(args: argparse.Namespace) -> int:
    config, plan, source = plan_from_args(args)
    if args.json:
        print(json.dumps(plan_json(config, plan, source), indent=2))
    else:
        print(format_plan(config, plan, source, full_config=args.full_config))
    if plan.problems:
        raise CommandError("this layout cannot work:\n  - " + "\n  - ".join(plan.problems))
    return 0


register_command(
    "plan",
    "print the parallel layout, per-GPU memory and time per step a run config implies "
    "(refuses layouts that cannot work)",
    add_plan_arguments,
    run_plan,
)
