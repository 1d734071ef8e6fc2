"""What a run config implies on a GPU cluster: layout, per-GPU memory, tokens and time per step.

Pure arithmetic (no torch, no Ray): :func:`make_plan` takes the model shape, the run's sizes
(:class:`Workload`, built from a RunConfig by ``plan_command``) and the cluster, and returns a
:class:`Plan` whose ``problems`` list says why a layout cannot work (empty when it can).

Memory model of one actor GPU (Megatron, bf16 weights, Adam):
    weights   2 B/param of the largest pipeline stage / TP
    grads     4 B/param (Megatron DDP's fp32 ``main_grad`` buffer, ``grad_reduce_in_fp32``)
    optimizer 12 B/param (fp32 master + Adam m + v), / (DP·CP) with the distributed optimizer
    activations of one micro-batch of ``actor.max_tokens`` tokens (/CP), per layer and token
    (flash attention, no dropout; Korthikanti et al. 2022 counted for GQA + SwiGLU):
        8h + 6q + 6kv + 6I bytes  (norm and linear inputs, q/k/v, attention out, fc1/SwiGLU)
    divided by TP (all of it with sequence parallelism, all but the 4h of norm inputs without).
    With full recomputation only each layer's 2h-byte input is kept, plus one layer's working
    set; logits come on top: the output layer's [tokens/CP, V/TP] and the micro-batch's response
    logits [response tokens, V/TP] (under CP every rank gathers all of them: the loss runs on
    every CP rank), bf16, each with its gradient.
Packing (``actor.packing``, the default): micro-batches are filled with real tokens, so
``actor.max_tokens`` counts a rollout's student and teacher sequences (prompt + response each)
and no compute goes to padding. Right-padded micro-batches cost (sequences) × (longest), and
the FLOPs count the padding: each sequence is assumed padded halfway from the mean to the
maximum length (longest-first micro-batching), an assumption printed with the plan.
vLLM engine GPU: ``gpu_memory_utilization`` × GPU memory = weights / TP + runtime overhead + KV
cache (K and V, bf16, per layer and KV head).
Time: training FLOPs (6 per matmul param and token, +2 with recomputation, +2 per forward-only
scoring pass, causal attention 4·ctx·q per layer) at an assumed MFU; decoding bandwidth-bound
(each decode iteration reads the weight shard and the live KV cache) at an assumed efficiency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from rlrt_megatron.launch.shapes import ModelShape

GB = 1e9
TEACHER_TEMPLATE_MARGIN = 1024  # tokens of the teacher template around the peer context


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """The GPUs a run gets. Defaults: H100 SXM 80 GB (989 TFLOP/s dense bf16, 3.35 TB/s)."""

    nodes: int
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0
    peak_tflops: float = 989.0
    hbm_tb_s: float = 3.35


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """What the estimate assumes; every one is printed with the plan."""

    recompute: Literal["full", "none"] = "full"
    train_mfu: float = 0.40
    decode_bandwidth_efficiency: float = 0.5
    mean_prompt_fraction: float = 0.25
    """Mean prompt length as a fraction of ``data.max_prompt_tokens``."""
    mean_response_fraction: float = 0.5
    """Mean response length as a fraction of ``rollout.max_response_tokens``."""
    runtime_overhead_gb: float = 4.0
    """CUDA context, NCCL buffers, allocator fragmentation (actor), graphs/activations (vLLM)."""
    sync_gb_s: float = 10.0
    """Effective bandwidth of the trainer→engine weight sync."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    """The run's sizes (from the run config's data/actor/rollout sections)."""

    tp: int
    pp: int
    cp: int = 1
    dp: int
    sequence_parallel: bool
    packing: bool = True
    distributed_optimizer: bool = True
    param_bytes: int = 2  # bf16 (4 for float32)
    micro_batch_tokens: int  # actor.max_tokens
    prompts_per_step: int
    rollouts_per_prompt: int
    mini_batches: int
    max_prompt_tokens: int
    max_response_tokens: int
    needs_teacher: bool
    engines: int
    engine_tp: int
    gpu_memory_utilization: float
    placement: Literal["colocated", "disaggregated"]


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU, by part."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass
class Plan:
    shape: ModelShape
    workload: Workload
    cluster: Cluster
    assumptions: Assumptions
    actor_gpus: int = 0
    rollout_gpus: int = 0
    padded_vocab: int = 0
    actor_memory: Memory = field(default_factory=lambda: Memory({}))
    engine_memory: Memory = field(default_factory=lambda: Memory({}))
    kv_tokens_per_engine: int = 0
    numbers: dict[str, float] = field(default_factory=dict)
    """Sequences, tokens, FLOPs and seconds per step (see :func:`_step_numbers`)."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def padded_vocab(vocab: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron's vocabulary: rounded up to a multiple of ``divisible_by · TP``."""
    multiple = divisible_by * tp
    return math.ceil(vocab / multiple) * multiple


def stage_params(shape: ModelShape, pp: int, vocab: int) -> int:
    """Parameters of the largest pipeline stage (layers split evenly; the first stage holds the
    embedding, the last the final norm and the LM head, a copy of the embedding when tied)."""
    layers = math.ceil(shape.layers / pp)
    body = layers * shape.layer_params
    embedding = vocab * shape.hidden
    if pp == 1:
        return body + embedding + shape.hidden + (0 if shape.tied else embedding)
    return body + max(embedding, shape.hidden + embedding)


def activation_bytes_per_token_layer(shape: ModelShape) -> tuple[int, int]:
    """(bytes split by TP, bytes split only by sequence parallelism) per token and layer."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    return 4 * h + 6 * q + 6 * kv + 6 * i, 4 * h


def actor_memory(shape: ModelShape, w: Workload, a: Assumptions) -> Memory:
    """Per-GPU bytes of the actor on its busiest (first) pipeline stage (module docstring)."""
    params = stage_params(shape, w.pp, padded_vocab(shape.vocab, w.tp)) / w.tp
    shard = w.dp * w.cp if w.distributed_optimizer else 1
    master = 4 if w.param_bytes == 2 else 0
    tokens = w.micro_batch_tokens / w.cp
    by_tp, by_sp = activation_bytes_per_token_layer(shape)
    # Without Transformer Engine, CP all-gathers each layer's K and V (bf16) for the backward:
    # CP − 1 more rows of them per local token.
    by_tp += 4 * shape.kv_dim * (w.cp - 1)
    per_token_layer = by_tp / w.tp + (by_sp / w.tp if w.sequence_parallel else by_sp)
    layers = math.ceil(shape.layers / w.pp)
    if a.recompute == "full":
        kept = 2 * shape.hidden / (w.tp if w.sequence_parallel else 1)
        activations = tokens * (layers * kept + per_token_layer)
    else:
        activations = tokens * layers * per_token_layer
    # 1F1B: the first stage holds up to PP micro-batches' activations in flight.
    activations *= w.pp
    vocab = padded_vocab(shape.vocab, w.tp) / w.tp
    logits = 2 * (tokens + response_tokens(w, a)) * vocab * 2
    return Memory(
        {
            "weights": params * w.param_bytes,
            "gradients (fp32 main_grad)": params * 4,
            "optimizer (Adam fp32" + (" master + m + v" if master else " m + v") + ")": params
            * (master + 8)
            / shard,
            f"activations ({a.recompute} recompute)": activations,
            "logits + grad (bf16)": logits,
            "runtime overhead": a.runtime_overhead_gb * GB,
        }
    )


def response_tokens(w: Workload, a: Assumptions) -> float:
    """Response tokens of one full micro-batch (what the loss reads), from the mean lengths:
    a rollout puts its response through the model once, twice with a teacher view."""
    prompt = a.mean_prompt_fraction * w.max_prompt_tokens
    response = a.mean_response_fraction * w.max_response_tokens
    rollout = prompt + response
    responses = response
    if w.needs_teacher:
        rollout += prompt + 2 * response + TEACHER_TEMPLATE_MARGIN
        responses += response
    return w.micro_batch_tokens * responses / rollout


def widest_rollout_tokens(w: Workload) -> tuple[int, str]:
    """Micro-batch tokens the widest rollout needs (student and teacher sequence travel in one
    micro-batch), and how they add up."""
    student = w.max_prompt_tokens + w.max_response_tokens
    if not w.needs_teacher:
        return student, f"prompt {w.max_prompt_tokens} + response {w.max_response_tokens}"
    teacher = student + w.max_response_tokens + TEACHER_TEMPLATE_MARGIN
    how = (
        f"student {student} + teacher {teacher} (prompt {w.max_prompt_tokens} + peer response "
        f"{w.max_response_tokens} + template {TEACHER_TEMPLATE_MARGIN} + response "
        f"{w.max_response_tokens})"
    )
    if w.packing:
        return student + teacher, how
    return 2 * teacher, f"2 padded rows of the teacher's {teacher} tokens"


def engine_memory(shape: ModelShape, w: Workload, c: Cluster, a: Assumptions) -> Memory:
    """Per-GPU bytes of a vLLM engine: its budget split into weights, overhead and KV cache."""
    budget = w.gpu_memory_utilization * c.gpu_memory_gb * GB
    weights = shape.total_params * 2 / w.engine_tp
    overhead = a.runtime_overhead_gb * GB / 2
    return Memory(
        {
            "weights (bf16) / TP": weights,
            "runtime overhead": overhead,
            "KV cache": budget - weights - overhead,
        }
    )


def kv_bytes_per_token_per_gpu(shape: ModelShape, engine_tp: int) -> float:
    """KV heads are split over TP, and replicated once TP exceeds their number."""
    return shape.kv_bytes_per_token / min(engine_tp, shape.kv_heads)


def check_layout(shape: ModelShape, w: Workload, c: Cluster) -> list[str]:
    """Why the layout cannot work (empty: it can)."""
    problems = []
    if shape.heads % w.tp:
        problems.append(f"actor TP={w.tp} does not divide the {shape.heads} attention heads")
    if shape.kv_heads % w.tp:
        problems.append(
            f"actor TP={w.tp} does not divide the {shape.kv_heads} KV heads (Megatron splits "
            "whole query groups over TP)"
        )
    if shape.layers % w.pp:
        problems.append(f"actor PP={w.pp} does not divide the {shape.layers} layers")
    if w.tp > c.gpus_per_node:
        problems.append(f"actor TP={w.tp} spans nodes ({c.gpus_per_node} GPUs per node)")
    if shape.heads % w.engine_tp:
        problems.append(
            f"rollout TP={w.engine_tp} does not divide the {shape.heads} attention heads"
        )
    if shape.kv_heads % w.engine_tp and w.engine_tp % shape.kv_heads:
        problems.append(
            f"rollout TP={w.engine_tp} neither divides nor is a multiple of the "
            f"{shape.kv_heads} KV heads"
        )
    if w.engine_tp > c.gpus_per_node:
        problems.append(f"rollout TP={w.engine_tp} spans nodes ({c.gpus_per_node} GPUs per node)")
    total = c.nodes * c.gpus_per_node
    actor = w.tp * w.pp * w.cp * w.dp
    rollout = w.engines * w.engine_tp
    if w.placement == "colocated":
        # Each engine shares one GPU with one trainer rank (cluster.placement): TP=1 engines,
        # no more engines than ranks, and the ranks alone fill the cluster.
        if w.engine_tp != 1:
            problems.append(
                f"colocated rollout engines share one GPU with a trainer rank: rollout TP must "
                f"be 1, got {w.engine_tp}"
            )
        if w.engines > actor:
            problems.append(
                f"colocated placement puts each engine beside a trainer rank: {w.engines} "
                f"engines need at least as many ranks, the actor has {actor}"
            )
        if actor != total:
            problems.append(
                f"colocated: actor TP·PP·CP·DP = {w.tp}·{w.pp}·{w.cp}·{w.dp} = {actor} GPUs, "
                f"but the cluster has {c.nodes}×{c.gpus_per_node} = {total} GPUs (the engines "
                "share the ranks' GPUs)"
            )
    elif actor + rollout != total:
        problems.append(
            f"actor TP·PP·CP·DP = {w.tp}·{w.pp}·{w.cp}·{w.dp} = {actor} GPUs plus rollout "
            f"engines×TP = {w.engines}×{w.engine_tp} = {rollout} GPUs is {actor + rollout}, but "
            f"the cluster has {c.nodes}×{c.gpus_per_node} = {total} GPUs"
        )
    widest, how = widest_rollout_tokens(w)
    if w.micro_batch_tokens < widest:
        problems.append(
            f"actor.max_tokens={w.micro_batch_tokens} cannot hold the widest rollout: {widest} "
            f"{'real' if w.packing else 'padded'} tokens ({how})"
        )
    return problems


def _step_numbers(shape: ModelShape, w: Workload, c: Cluster, a: Assumptions, kv_tokens: int):
    """Tokens, FLOPs and seconds of one RL step (rough; see the module docstring)."""
    sequences = w.prompts_per_step * w.rollouts_per_prompt
    prompt = a.mean_prompt_fraction * w.max_prompt_tokens
    response = a.mean_response_fraction * w.max_response_tokens
    seq_len = prompt + response
    matmul_params = shape.layers * shape.layer_params + shape.vocab * shape.hidden

    def forward_flops_per_token(length: float) -> float:
        # Causal attention: QK^T and AV over on average length/2 keys, 2 FLOPs per MAC.
        return 2 * matmul_params + shape.layers * 2 * length * shape.q_dim

    teacher_len = prompt + 2 * response + TEACHER_TEMPLATE_MARGIN
    # Padded micro-batches also compute on padding (module docstring): each sequence assumed
    # padded halfway to the longest.
    longest = w.max_prompt_tokens + w.max_response_tokens
    student_cost = seq_len if w.packing else (seq_len + longest) / 2
    teacher_cost = (
        teacher_len
        if w.packing
        else (teacher_len + longest + w.max_response_tokens + TEACHER_TEMPLATE_MARGIN) / 2
    )
    student = sequences * student_cost * forward_flops_per_token(seq_len)
    teacher = (
        sequences * teacher_cost * forward_flops_per_token(teacher_len) if w.needs_teacher else 0
    )
    update_passes = 3 + (1 if a.recompute == "full" else 0)  # fwd + 2×bwd (+ recompute fwd)
    flops = student * (1 + update_passes) + teacher  # scoring forward, then the update
    actor_gpus = w.tp * w.pp * w.cp * w.dp
    train_s = flops / (actor_gpus * c.peak_tflops * 1e12 * a.train_mfu)

    per_engine = sequences / w.engines
    concurrent = max(1.0, min(per_engine, kv_tokens / seq_len))
    kv_per_gpu = kv_bytes_per_token_per_gpu(shape, w.engine_tp)
    # One decode iteration reads this GPU's weight shard and the live KV cache (mean context
    # prompt + response/2).
    bytes_per_iteration = (
        shape.total_params * 2 / w.engine_tp + concurrent * (prompt + response / 2) * kv_per_gpu
    )
    iteration_s = bytes_per_iteration / (c.hbm_tb_s * 1e12 * a.decode_bandwidth_efficiency)
    waves = math.ceil(per_engine / concurrent)
    rollout_s = waves * response * iteration_s
    sync_s = shape.total_params * 2 / (a.sync_gb_s * GB)
    return {
        "sequences": sequences,
        "mean_prompt_tokens": prompt,
        "mean_response_tokens": response,
        "tokens": sequences * seq_len,
        "generated_tokens": sequences * response,
        "teacher_tokens": sequences * teacher_len if w.needs_teacher else 0,
        "train_flops": flops,
        "concurrent_sequences_per_engine": concurrent,
        "decode_tokens_per_s": w.engines * concurrent / iteration_s,
        "rollout_s": rollout_s,
        "train_s": train_s,
        "sync_s": sync_s,
        "step_s": rollout_s + train_s + sync_s,
    }


def make_plan(
    shape: ModelShape, workload: Workload, cluster: Cluster, assumptions: Assumptions | None = None
) -> Plan:
    """Layout, memory and time of a run; ``plan.problems`` lists what cannot work."""
    a = assumptions or Assumptions()
    w, c = workload, cluster
    plan = Plan(shape, w, c, a)
    for name in ("tp", "pp", "cp", "dp", "engines", "engine_tp"):
        if getattr(w, name) < 1:
            plan.problems.append(f"{name} must be >= 1, got {getattr(w, name)}")
    if plan.problems:
        return plan
    plan.actor_gpus = w.tp * w.pp * w.cp * w.dp
    plan.rollout_gpus = w.engines * w.engine_tp
    plan.padded_vocab = padded_vocab(shape.vocab, w.tp)
    plan.problems.extend(check_layout(shape, w, c))
    plan.actor_memory = actor_memory(shape, w, a)
    plan.engine_memory = engine_memory(shape, w, c, a)
    gpu_bytes = c.gpu_memory_gb * GB
    if plan.actor_memory.total > gpu_bytes:
        plan.problems.append(
            f"actor needs {plan.actor_memory.total / GB:.1f} GB per GPU, over the "
            f"{c.gpu_memory_gb:g} GB of a GPU (raise TP/PP/DP, lower actor.max_tokens"
            + (", or recompute activations" if a.recompute == "none" else "")
            + ")"
        )
    if w.placement == "colocated":
        # While the engine generates, the actor's weights, gradients and optimizer state stay
        # on the GPU (only the engine sleeps during training), so both must fit side by side.
        resident = sum(
            v for k, v in plan.actor_memory.parts.items() if not k.startswith(("act", "logits"))
        )
        budget = w.gpu_memory_utilization * gpu_bytes
        if resident + budget > gpu_bytes:
            plan.problems.append(
                f"colocated: the actor keeps {resident / GB:.1f} GB (weights, gradients, "
                f"optimizer) on the GPU while the engine takes gpu_memory_utilization="
                f"{w.gpu_memory_utilization} × {c.gpu_memory_gb:g} GB = {budget / GB:.1f} GB: "
                f"lower rollout.gpu_memory_utilization to at most "
                f"{max(0.0, (gpu_bytes - resident) / gpu_bytes):.2f}"
            )
    kv = plan.engine_memory.parts["KV cache"]
    kv_per_gpu = kv_bytes_per_token_per_gpu(shape, w.engine_tp)
    plan.kv_tokens_per_engine = max(0, int(kv / kv_per_gpu))
    longest = w.max_prompt_tokens + w.max_response_tokens
    if plan.kv_tokens_per_engine < longest:
        plan.problems.append(
            f"a vLLM engine (TP={w.engine_tp}, gpu_memory_utilization="
            f"{w.gpu_memory_utilization}) has KV cache for {plan.kv_tokens_per_engine} tokens, "
            f"less than one {longest}-token sequence"
        )
    plan.numbers = _step_numbers(shape, w, c, a, max(plan.kv_tokens_per_engine, 1))
    return plan
