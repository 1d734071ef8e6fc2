"""Forward-only scoring of rollouts: old log-probs, entropies, teacher log-probs, KL, top-k.

One pass over a batch of rollouts (see :mod:`.forward` for the layout) gives, per response
token t of rollout b (float32, [B, T] with T the longest response; 0 past a row's length):

    student_log_prob  log P_S(y_t)                     (the PPO "old" log-probs)
    student_entropy   H(P_S^t)
and, for rollouts with a teacher prompt (``has_teacher``):
    teacher_log_prob  log P_T(y_t)
    kl                KL(P_S^t ‖ P_T^t)               (D̄_t)
    teacher_entropy   H(P_T^t)                         (SRPO's dynamic weight; on request)
    top-k (``topk`` > 0): the student's top-k ids [B, T, k], both views' log-probs there and
                      both tails log Σ_{v∉top-k} P(v) (SDPO/SRPO; analyses)
Rollouts without a teacher get the student's top-k alone (teacher fields 0).

Where the teacher weights differ from the student's (``teacher_swap``: the frozen initial model
or an EMA, see :mod:`.teacher_weights`), the two views cannot share a forward pass:

* with ``topk`` > 0, per micro-batch: the teacher sequences forward-only with the teacher
  weights swapped in, their response logits kept (last stage, one micro-batch's worth), then
  the student sequences with the policy's weights and every statistic of the shared pass (KL
  and top-k included) from both (:func:`.forward.run_pairs`). Two swaps per micro-batch.
* with ``topk`` = 0 (what the trainer asks for), the cheaper two passes: all student
  micro-batches, then all teacher sequences inside one swap. Only per-view statistics come out
  that way (teacher log-probs and entropy; ``kl`` is ``None``).

Parallelism: each DP rank scores its share of the rollouts (balanced by tokens); the results are
then **published to every rank** of the world (a zero-padded all-reduce from the last PP stage's
TP rank 0 of each DP replica), because the update step of any rank may need any row (mini-batches
are re-split across DP ranks, and the loss runs on the last stage). The published top-k tensors
are B·T·k: request them for analysis-sized batches; the update step recomputes top-k itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from rlrt_megatron.megatron.forward import (
    Ids,
    MicroBatch,
    SequenceLayout,
    TeacherSwap,
    check_rollouts,
    dp_share,
    plan_microbatches,
    publish,
    result_owner,
    rollout_costs,
    run_pairs,
    vocab_kwargs,
)
from rlrt_megatron.megatron.vocab_parallel import (
    vocab_parallel_entropy,
    vocab_parallel_log_prob_entropy,
    vocab_parallel_pair_stats,
    vocab_parallel_topk,
)


@dataclass
class ScoreResult:
    """Per-token scores of a batch, in the caller's rollout order (see the module docstring).

    Shapes: [B, T] unless noted; ``has_teacher`` [B]; top-k fields [B, T, k] (tails [B, T]).
    Fields that were not requested are ``None``.
    """

    response_mask: torch.Tensor
    student_log_prob: torch.Tensor
    student_entropy: torch.Tensor
    has_teacher: torch.Tensor
    teacher_log_prob: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    teacher_entropy: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    student_topk_log_prob: torch.Tensor | None = None
    student_tail: torch.Tensor | None = None
    teacher_topk_log_prob: torch.Tensor | None = None
    teacher_tail: torch.Tensor | None = None

    def select(self, rows: Sequence[int]) -> ScoreResult:
        """The rows ``rows`` of every field (a new result)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return ScoreResult(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in fields(self)
            }
        )


def score_rollouts(
    model: Any,
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    *,
    teacher_prompts: Sequence[Ids | None] | None = None,
    topk: int = 0,
    teacher_entropy: bool = False,
    temperature: float = 1.0,
    max_tokens: int = 8192,
    teacher_swap: TeacherSwap | None = None,
) -> ScoreResult:
    """Score rollouts with the model's current weights (and the teacher's, see below).

    Args:
        model: a :class:`~rlrt_megatron.models.qwen3_megatron.Qwen3MegatronModel`.
        prompts, responses: per rollout, the student prompt ids and the response ids.
        teacher_prompts: per rollout, the teacher's prompt ids (context ⊕ prompt) or ``None``
            (no teacher for that rollout); ``None``: no teacher view at all.
        topk: > 0: also the top-k view (SDPO/SRPO distillation, analyses).
        teacher_entropy: also H(P_T) of the teacher view.
        temperature: logits are divided by it (the sampling temperature).
        max_tokens: padded-token budget of a micro-batch (both views of a rollout count).
        teacher_swap: ``None``: the teacher view uses the same weights as the student, in the
            same micro-batches. Else a context-manager factory that swaps the teacher weights in
            (and back out) for the teacher's own passes (see the module docstring).

    Every rank must call this with the same arguments; every rank gets the full result.
    """
    check_rollouts(prompts, responses, teacher_prompts, model.vocab_size)
    if topk < 0:
        raise ValueError(f"topk must be >= 0, got {topk}")
    if teacher_prompts is None:
        has_teacher = torch.zeros(len(prompts), dtype=torch.bool)
    else:
        has_teacher = torch.tensor([t is not None for t in teacher_prompts], dtype=torch.bool)
    paired = bool(has_teacher.any())
    if teacher_swap is None or topk > 0 or not paired:
        out = _pass(
            model,
            prompts,
            responses,
            teacher_prompts,
            topk=topk,
            teacher_entropy=teacher_entropy,
            temperature=temperature,
            max_tokens=max_tokens,
            teacher_swap=teacher_swap if paired else None,
        )
        return ScoreResult(has_teacher=has_teacher, **out)

    # A separate teacher without top-k: all students, then all teachers inside one swap.
    assert teacher_prompts is not None  # paired
    out = _pass(model, prompts, responses, None, temperature=temperature, max_tokens=max_tokens)
    result = ScoreResult(has_teacher=has_teacher, **out)
    rows = [i for i, t in enumerate(teacher_prompts) if t is not None]
    with teacher_swap():
        teacher = _pass(
            model,
            [teacher_prompts[i] for i in rows],
            [responses[i] for i in rows],
            None,
            temperature=temperature,
            max_tokens=max_tokens,
        )
    index = torch.tensor(rows, dtype=torch.long)
    width = teacher["student_log_prob"].shape[1]  # the longest teacher-row response
    result.teacher_log_prob = torch.zeros_like(result.student_log_prob)
    result.teacher_log_prob[index, :width] = teacher["student_log_prob"]
    if teacher_entropy:
        result.teacher_entropy = torch.zeros_like(result.student_log_prob)
        result.teacher_entropy[index, :width] = teacher["student_entropy"]
    return result


def _pass(
    model: Any,
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    teacher_prompts: Sequence[Ids | None] | None,
    *,
    topk: int = 0,
    teacher_entropy: bool = False,
    temperature: float,
    max_tokens: int,
    teacher_swap: TeacherSwap | None = None,
) -> dict[str, torch.Tensor]:
    """One forward-only pass (the teacher view with its own weights, micro-batch by micro-batch,
    under ``teacher_swap``); returns the ScoreResult fields (except ``has_teacher``)."""
    from megatron.core import parallel_state as mpu

    n, width = len(prompts), max(len(r) for r in responses)
    mask = torch.zeros(n, width, dtype=torch.bool)
    for i, r in enumerate(responses):
        mask[i, : len(r)] = True
    want_teacher = teacher_prompts is not None and any(t is not None for t in teacher_prompts)
    shapes = {"student_log_prob": (), "student_entropy": ()}
    if want_teacher:
        shapes |= {"teacher_log_prob": (), "kl": ()}
        if teacher_entropy:
            shapes["teacher_entropy"] = ()
    if topk:
        shapes |= {"student_topk_log_prob": (topk,), "student_tail": ()}
        if want_teacher:
            shapes |= {"teacher_topk_log_prob": (topk,), "teacher_tail": ()}
    out = {name: torch.zeros(n, width, *extra) for name, extra in shapes.items()}
    if topk:
        out["topk_ids"] = torch.zeros(n, width, topk, dtype=torch.long)

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
            separate_teacher=teacher_swap is not None,
        )

        def on_pair(mb: MicroBatch, student: torch.Tensor, teacher: torch.Tensor | None):
            _score_microbatch(
                model, mb, student, teacher, responses, out, topk, teacher_entropy, temperature
            )
            return student.new_zeros(()), {}

        run_pairs(model, microbatches, on_pair, forward_only=True, teacher_swap=teacher_swap)
    publish(out, result_owner())
    return dict(response_mask=mask, **out)


def _write(out: torch.Tensor, rows: Sequence[int], lengths: Sequence[int], flat: torch.Tensor):
    """Scatter concatenated per-token values [Σ len, ...] into ``out[row, :len]``."""
    for row, part in zip(rows, torch.split(flat.detach().cpu(), list(lengths)), strict=True):
        out[row, : part.shape[0]] = part


def _score_microbatch(
    model: Any,
    mb: MicroBatch,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    responses: Sequence[Ids],
    out: dict[str, torch.Tensor],
    topk: int,
    teacher_entropy: bool,
    temperature: float,
) -> None:
    """Scores of one micro-batch (last pipeline stage) from its students' response logits
    [n_student_tokens, V_local] (indexed by ``mb.student_index``) and its paired teachers'
    [n_teacher_tokens, V_local] (``paired`` order; from the same pass or the teacher's own).

    Paired rollouts get every student and teacher statistic from one pass over both views'
    response logits (``vocab_parallel_pair_stats``); the others from the student view alone.
    """
    kw = vocab_kwargs(model, student_logits, temperature)
    dev = student_logits.device

    def targets(rows: list[int]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(responses[r], dtype=torch.long) for r in rows]).to(dev)

    def write(rows: list[int], values: dict[str, torch.Tensor]) -> None:
        lengths = [len(responses[r]) for r in rows]
        for name, value in values.items():
            _write(out[name], rows, lengths, value)

    unpaired = sorted(set(range(len(mb.rows))) - set(mb.paired))
    if unpaired:
        rows = [mb.rows[j] for j in unpaired]
        student = student_logits.index_select(0, mb.student_index(unpaired).to(dev))
        log_prob, entropy = vocab_parallel_log_prob_entropy(student, targets(rows), **kw)
        write(rows, {"student_log_prob": log_prob, "student_entropy": entropy})
        if topk:
            view = vocab_parallel_topk(student, None, k=topk, **kw)
            write(
                rows,
                {
                    "topk_ids": view.ids,
                    "student_topk_log_prob": view.student_log_prob,
                    "student_tail": view.student_tail,
                },
            )
    if mb.paired:
        rows = [mb.rows[j] for j in mb.paired]
        student = student_logits.index_select(0, mb.student_index(mb.paired).to(dev))
        teacher = teacher_logits
        stats = vocab_parallel_pair_stats(student, teacher, targets(rows), **kw)
        values = {
            "student_log_prob": stats.student_log_prob,
            "student_entropy": stats.student_entropy,
            "teacher_log_prob": stats.teacher_log_prob,
            "kl": stats.kl,
        }
        if teacher_entropy:
            values["teacher_entropy"] = vocab_parallel_entropy(teacher, **kw)
        if topk:
            view = vocab_parallel_topk(student, teacher, k=topk, **kw)
            values |= {
                "topk_ids": view.ids,
                "student_topk_log_prob": view.student_log_prob,
                "student_tail": view.student_tail,
                "teacher_topk_log_prob": view.teacher_log_prob,
                "teacher_tail": view.teacher_tail,
            }
        write(rows, values)
