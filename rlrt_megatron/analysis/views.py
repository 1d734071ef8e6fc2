"""Per-position student/teacher (or fine-tuned/base) statistics for the analyses, on megatron-core.

Built on the actor's scoring plumbing (:mod:`rlrt_megatron.megatron.forward`) and its
vocab-parallel kernels: nothing here materialises a full [T, V] tensor; each micro-batch's
response logits are reduced chunk by chunk across the tensor-parallel shards.

Two passes:

* :func:`pair_views` — one model, a student view (prompt ⊕ response) and a teacher view
  (teacher prompt ⊕ response) in the same micro-batch. Per response position t, float32 [B, T]:
  ``kl`` = D̄_t = KL(P_S‖P_T), ``student_log_prob`` / ``teacher_log_prob`` of the sampled token,
  ``explore_id`` = argmax_v D̂_t(v) and ``exploit_id`` = argmin_v D̂_t(v) with
  D̂_t(v) = log P_S(v) − log P_T(v) over the full vocabulary (int64 [B, T]); and with ``topk`` > 0
  the candidates of both views: ``cand_ids`` [B, T, 2k] (the student's top-k, then the teacher's
  top-k; an id may appear twice) with ``cand_student_log_prob`` / ``cand_teacher_log_prob``.
* :func:`shift_views` — two models with the same vocabulary (fine-tuned, base) on the same
  tokens: ``js`` = JS(π_ft‖π_base) [B, T], ``ft_topk_ids`` / ``base_topk_ids`` [B, T, k] and
  ``base_log_prob_of_ft_top1`` [B, T]. Each micro-batch runs through the base model first; its
  response logits (one micro-batch's worth) are kept until the fine-tuned pass of the same
  micro-batch has used them.

Every rank must call these with the same arguments; every rank gets the full result.
The ``*_worker`` functions are the entry points of :func:`rlrt_megatron.megatron.launcher.launch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from rlrt_megatron.megatron.forward import (
    Ids,
    MicroBatch,
    SequenceLayout,
    check_rollouts,
    dp_share,
    plan_microbatches,
    publish,
    result_owner,
    rollout_costs,
    run_schedule,
    vocab_kwargs,
)
from rlrt_megatron.megatron.vocab_common import (
    Shard,
    chunk_rows,
    chunks,
    flatten_logits,
    row_max,
    upcast,
    workspace,
)
from rlrt_megatron.megatron.vocab_parallel import vocab_parallel_pair_stats
from rlrt_megatron.megatron.vocab_topk import vocab_parallel_topk


@torch.no_grad()
def vocab_parallel_js(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    vocab_start: int = 0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Jensen–Shannon divergence (nats) between softmax(p_logits) and softmax(q_logits) per token.

    JS = ½ Σ_v p_v log(p_v / m_v) + ½ Σ_v q_v log(q_v / m_v),  m = (p + q) / 2.
    Shapes: [..., V_local] (this rank's vocabulary slice; see
    :mod:`rlrt_megatron.megatron.vocab_common`) → [...] float32, the same on every TP rank.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"shapes differ: {p_logits.shape} vs {q_logits.shape}")
    p_flat, lead = flatten_logits(p_logits)
    q_flat, _ = flatten_logits(q_logits)
    n = p_flat.shape[0]
    shard = Shard.make(p_flat.shape[1], group, vocab_start, vocab_size)
    nv = shard.n_valid
    rows = chunk_rows(chunk_size, nv, n_buffers=3)
    out = torch.empty(n, dtype=torch.float32, device=p_flat.device)
    ws = workspace(3, rows, n, nv, p_flat.device)
    for s, e in chunks(n, rows):
        c = e - s
        lp = upcast(p_flat, s, e, nv, temperature, ws[0, c])
        lq = upcast(q_flat, s, e, nv, temperature, ws[1, c])
        m = shard.all_reduce(torch.stack([row_max(lp), row_max(lq)]), dist.ReduceOp.MAX)
        lp.sub_(m[0].unsqueeze(1))
        lq.sub_(m[1].unsqueeze(1))
        sums = shard.all_reduce(
            torch.stack([lp.exp().sum(dim=1), lq.exp().sum(dim=1)]), dist.ReduceOp.SUM
        )
        lp.sub_(sums[0].log().unsqueeze(1))  # log p
        lq.sub_(sums[1].log().unsqueeze(1))  # log q
        lm = torch.logaddexp(lp, lq, out=ws[2, c]).sub_(math.log(2.0))  # log m
        # Logits are finite, so log p, log q, log m are finite and p·(log p − log m) is defined
        # even where p underflows to 0.
        terms = lp.exp().mul_(lp - lm) + lq.exp().mul_(lq - lm)
        js = shard.all_reduce(terms.sum(dim=1), dist.ReduceOp.SUM)
        out[s:e] = (0.5 * js).clamp_min(0.0)
    return out.view(lead)


def _allocate(n: int, width: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]):
    return {name: torch.zeros(n, width, *extra, dtype=dt) for name, (extra, dt) in shapes.items()}


def _scatter(out: torch.Tensor, rows: Sequence[int], lengths: Sequence[int], flat: torch.Tensor):
    """Concatenated per-token values [Σ len, ...] → ``out[row, :len]``."""
    for row, part in zip(rows, torch.split(flat.detach().cpu(), list(lengths)), strict=True):
        out[row, : part.shape[0]] = part.to(out.dtype)


def pair_views(
    model: Any,
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    teacher_prompts: Sequence[Ids],
    *,
    topk: int = 0,
    max_tokens: int = 8192,
) -> dict[str, torch.Tensor]:
    """Student/teacher statistics of every response position (see the module docstring)."""
    from megatron.core import parallel_state as mpu

    check_rollouts(prompts, responses, teacher_prompts, model.vocab_size)
    if any(t is None for t in teacher_prompts):
        raise ValueError("every rollout needs a teacher prompt for the pair views")
    f32, i64 = torch.float32, torch.long
    shapes = {
        name: ((), f32)
        for name in ("kl", "student_log_prob", "teacher_log_prob", "explore_ratio", "exploit_ratio")
    } | {"explore_id": ((), i64), "exploit_id": ((), i64)}
    if topk:
        shapes |= {
            "cand_ids": ((2 * topk,), i64),
            "cand_student_log_prob": ((2 * topk,), f32),
            "cand_teacher_log_prob": ((2 * topk,), f32),
        }
    n, width = len(prompts), max(len(r) for r in responses)
    out = _allocate(n, width, shapes)
    rows = dp_share(
        rollout_costs(prompts, responses, teacher_prompts),
        mpu.get_data_parallel_world_size(),
        mpu.get_data_parallel_rank(),
    )
    if rows:
        microbatches = plan_microbatches(
            rows,
            prompts,
            responses,
            teacher_prompts,
            max_tokens=max_tokens,
            layout=SequenceLayout.of(model),
        )

        def on_logits(mb: MicroBatch, logits: torch.Tensor):
            flat = logits.reshape(-1, logits.shape[-1])
            kw = vocab_kwargs(model, logits, 1.0)
            student = flat.index_select(0, mb.student_index(mb.paired).to(flat.device))
            teacher = flat.index_select(0, mb.teacher_index().to(flat.device))
            mine = [mb.rows[j] for j in mb.paired]
            target = torch.cat([torch.as_tensor(responses[r], dtype=i64) for r in mine])
            stats = vocab_parallel_pair_stats(
                student, teacher, target.to(flat.device), markers=True, **kw
            )
            values = {
                "kl": stats.kl,
                "student_log_prob": stats.student_log_prob,
                "teacher_log_prob": stats.teacher_log_prob,
                "explore_id": stats.explore_id,
                "exploit_id": stats.exploit_id,
                "explore_ratio": stats.explore_log_ratio,
                "exploit_ratio": stats.exploit_log_ratio,
            }
            if topk:
                s_view = vocab_parallel_topk(student, teacher, k=topk, **kw)
                t_view = vocab_parallel_topk(teacher, student, k=topk, **kw)
                values |= {
                    "cand_ids": torch.cat([s_view.ids, t_view.ids], dim=-1),
                    "cand_student_log_prob": torch.cat(
                        [s_view.student_log_prob, t_view.teacher_log_prob], dim=-1
                    ),
                    "cand_teacher_log_prob": torch.cat(
                        [s_view.teacher_log_prob, t_view.student_log_prob], dim=-1
                    ),
                }
            lengths = [len(responses[r]) for r in mine]
            for name, value in values.items():
                _scatter(out[name], mine, lengths, value)
            return logits.new_zeros(()), {}

        run_schedule(model, microbatches, on_logits, forward_only=True)
    publish(out, result_owner())
    return out


def shift_views(
    finetuned: Any,
    base: Any,
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    *,
    topk: int = 20,
    max_tokens: int = 8192,
) -> dict[str, torch.Tensor]:
    """Fine-tuned vs base statistics of every response position (see the module docstring)."""
    from megatron.core import parallel_state as mpu

    if finetuned.vocab_size != base.vocab_size:
        raise ValueError(
            f"vocabularies differ: fine-tuned {finetuned.vocab_size}, base {base.vocab_size}"
        )
    check_rollouts(prompts, responses, None, finetuned.vocab_size)
    f32, i64 = torch.float32, torch.long
    shapes = {
        "js": ((), f32),
        "base_log_prob_of_ft_top1": ((), f32),
        "ft_topk_ids": ((topk,), i64),
        "base_topk_ids": ((topk,), i64),
    }
    n, width = len(prompts), max(len(r) for r in responses)
    out = _allocate(n, width, shapes)
    rows = dp_share(
        rollout_costs(prompts, responses, None),
        mpu.get_data_parallel_world_size(),
        mpu.get_data_parallel_rank(),
    )
    tp = mpu.get_tensor_model_parallel_world_size()
    sp = finetuned.config.sequence_parallel or base.config.sequence_parallel
    microbatches = (
        plan_microbatches(
            rows,
            prompts,
            responses,
            None,
            max_tokens=max_tokens,
            layout=SequenceLayout(
                packing=finetuned.packing and base.packing,
                cp_size=mpu.get_context_parallel_world_size(),
                tp_multiple=tp if sp else 1,
            ),
        )
        if rows
        else []
    )
    kept: dict[str, torch.Tensor] = {}  # the base view's response logits of one micro-batch
    for mb in microbatches:

        def keep_base(mb: MicroBatch, logits: torch.Tensor):
            flat = logits.reshape(-1, logits.shape[-1])
            kept["base"] = flat.index_select(0, mb.student_index().to(flat.device))
            return logits.new_zeros(()), {}

        def compare(mb: MicroBatch, logits: torch.Tensor):
            flat = logits.reshape(-1, logits.shape[-1])
            ft = flat.index_select(0, mb.student_index().to(flat.device))
            kw = vocab_kwargs(finetuned, logits, 1.0)
            base_logits = kept.pop("base")
            ft_view = vocab_parallel_topk(ft, base_logits, k=topk, **kw)
            base_view = vocab_parallel_topk(base_logits, None, k=topk, **kw)
            values = {
                "js": vocab_parallel_js(ft, base_logits, **kw),
                "base_log_prob_of_ft_top1": ft_view.teacher_log_prob[..., 0],
                "ft_topk_ids": ft_view.ids,
                "base_topk_ids": base_view.ids,
            }
            lengths = [len(responses[r]) for r in mb.rows]
            for name, value in values.items():
                _scatter(out[name], mb.rows, lengths, value)
            return logits.new_zeros(()), {}

        # Only the last pipeline stage sees logits; the others just run their stage twice.
        run_schedule(base, [mb], keep_base, forward_only=True)
        run_schedule(finetuned, [mb], compare, forward_only=True)
    publish(out, result_owner())
    return out


def _load(model_dir: str, dtype: str) -> Any:
    from rlrt_megatron.models.qwen3_megatron import build_qwen3_model

    model = build_qwen3_model(
        model_dir, dtype=torch.float32 if dtype == "float32" else torch.bfloat16
    )
    for chunk in model.chunks:
        chunk.eval()
    return model


def _trimmed(out: dict[str, torch.Tensor], responses: Sequence[Ids]) -> dict[str, list]:
    """Per rollout, each field cut to its response length (plain lists: picklable, small)."""
    return {
        name: [tensor[i, : len(r)].tolist() for i, r in enumerate(responses)]
        for name, tensor in out.items()
    }


def pair_views_worker(
    rank: int,
    model_dir: str,
    tp: int,
    pp: int,
    dtype: str,
    prompts: list[list[int]],
    responses: list[list[int]],
    teachers: list[list[int]],
    topk: int,
    max_tokens: int,
    cp: int = 1,
) -> dict[str, list] | None:
    """One rank of a :func:`pair_views` command; rank 0 returns the per-rollout lists."""
    from rlrt_megatron.megatron.parallel import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
    )

    initialize_parallel(
        ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, context_parallel=cp)
    )
    try:
        model = _load(model_dir, dtype)
        out = pair_views(model, prompts, responses, teachers, topk=topk, max_tokens=max_tokens)
    finally:
        destroy_parallel()
    return _trimmed(out, responses) if rank == 0 else None


def shift_views_worker(
    rank: int,
    finetuned_dir: str,
    base_dir: str,
    tp: int,
    pp: int,
    dtype: str,
    prompts: list[list[int]],
    responses: list[list[int]],
    topk: int,
    max_tokens: int,
    cp: int = 1,
) -> dict[str, list] | None:
    """One rank of a :func:`shift_views` command; rank 0 returns the per-rollout lists."""
    from rlrt_megatron.megatron.parallel import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
    )

    initialize_parallel(
        ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, context_parallel=cp)
    )
    try:
        base = _load(base_dir, dtype)
        finetuned = _load(finetuned_dir, dtype)
        out = shift_views(finetuned, base, prompts, responses, topk=topk, max_tokens=max_tokens)
    finally:
        destroy_parallel()
    return _trimmed(out, responses) if rank == 0 else None
