"""One RL update: mini-batches (one optimizer step each) of micro-batches (gradient accumulation).

The batch is cut into ``mini_batches`` contiguous row ranges, in the caller's order. For each:

1. (optional) ``before_minibatch(rows)`` may replace row tensors (e.g. token advantages from a
   teacher re-scored with the current weights, see :mod:`.teacher_weights`).
2. The normalizer N is the mini-batch's *global* count of tokens carrying a loss term (rows in
   ``pg_rows | distill_rows``; rows for ``seq-mean-token-mean``), over all its micro-batches
   and DP ranks, so that Σ_micro Σ_DP (Σ ℓ / N) is the single-process token-mean exactly.
3. Each DP rank takes its share of the rows (balanced by tokens), packs them into token-budget
   micro-batches and runs megatron's schedule with backward. For methods needing top-k (SDPO,
   SRPO) the top-k is taken at the student's *current* ids (student with gradient, teacher
   stop-gradient), and the teacher's logits come from:
   - the teacher sharing the policy's weights (``teacher_swap`` ``None``: behavior/current):
     the teacher sequences of the distillation rows ride in the same micro-batch, so the
     teacher is the *current* policy;
   - separate teacher weights (``teacher_swap``: the frozen initial model, SDPO's reference
     setting, or an EMA): per micro-batch a forward-only pass of its teacher sequences with the
     teacher weights swapped in, then the student's forward-backward, one schedule call each
     (:func:`.forward.run_pairs`: gradients accumulate across calls, the DP all-reduce runs
     once; no pipelining across micro-batches under PP, two parameter swaps per micro-batch).
   Megatron divides each micro-batch loss by the number of micro-batches of its schedule call
   and DDP averages the gradients over DP; the loss handed to megatron is multiplied by both to
   undo that.
4. The gradient norm is checked: a non-finite loss or grad norm skips the step (weights,
   optimizer state and LR schedule untouched; ``skipped`` = 1 in the metrics). Otherwise the
   Megatron optimizer clips (``clip_grad``) and steps, and the LR scheduler advances one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from rlrt_megatron.algorithms.distillation import srpo_token_weights
from rlrt_megatron.algorithms.objective import DistillInputs, LossConfig, method_loss
from rlrt_megatron.algorithms.registry import get_method
from rlrt_megatron.algorithms.reweighting import REWEIGHT_SUM_KEYS, DeferredReweighting
from rlrt_megatron.megatron.forward import (
    Ids,
    MicroBatch,
    SequenceLayout,
    TeacherSwap,
    check_rollouts,
    dp_share,
    plan_microbatches,
    result_owner,
    rollout_costs,
    run_pairs,
    schedule_divisor,
    vocab_kwargs,
)
from rlrt_megatron.megatron.vocab_parallel import (
    vocab_parallel_log_prob_entropy,
    vocab_parallel_topk,
)

# Row tensors of a TrainBatch ([B, T] or [B]) that `before_minibatch` may replace.
ROW_TENSORS = ("old_logprobs", "token_advantages", "rollout_logprobs", "teacher_entropy")


@dataclass(kw_only=True)
class TrainBatch:
    """The rollouts of one update and their per-token inputs (T = the longest response).

    Attributes:
        prompts, responses: per rollout, student prompt ids and response ids.
        old_logprobs: [B, T] behaviour-policy log-probs (from the scoring pass), or ``None``
            when the update is exactly on-policy (one mini-batch, weights unchanged since the
            rollouts were sampled): π_old = π_θ, so the loss takes the update forward's own
            log-probs, detached, and no separate scoring pass is needed (`on_policy_shortcut`).
        token_advantages: [B, T] A_t (the method's reweighting already applied), or with
            ``reweighting`` the group advantage A on each response token, reweighted here.
        pg_rows, distill_rows: [B] bool, from ``registry.policy_gradient_rows`` /
            ``registry.distillation_rows``.
        rollout_logprobs: [B, T] the engine's log-probs (truncated IS correction), optional.
        teacher_prompts: per rollout, the teacher prompt or ``None``; needed for distillation
            rows (top-k methods).
        teacher_entropy: [B, T] H of the teacher view (SRPO's dynamic weights).
        reweighting: Eq. 6–7's token weights left to the update (on-policy shortcut only,
            ``old_logprobs`` None): A_t per micro-batch from the forward's own log P_S and the
            teacher view's log P_T (`DeferredReweighting`); the metrics then carry its
            ``reweight_*`` sums (`token_weight_sums`) over all micro-batches and DP ranks.
    """

    prompts: Sequence[Ids]
    responses: Sequence[Ids]
    old_logprobs: torch.Tensor | None
    token_advantages: torch.Tensor
    pg_rows: torch.Tensor
    distill_rows: torch.Tensor
    rollout_logprobs: torch.Tensor | None = None
    teacher_prompts: Sequence[Ids | None] | None = None
    teacher_entropy: torch.Tensor | None = None
    reweighting: DeferredReweighting | None = None

    def __post_init__(self) -> None:
        check_rollouts(self.prompts, self.responses, self.teacher_prompts)
        b, t = len(self.responses), max(len(r) for r in self.responses)
        if self.reweighting is not None:
            if self.old_logprobs is not None:
                raise ValueError(
                    "reweighting in the update needs old_logprobs=None (the on-policy shortcut:"
                    " log P_S is the update's own forward)"
                )
            self._check_reweighting(b, t)
        for name in ROW_TENSORS:
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b, t):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {(b, t)}")
        for name in ("pg_rows", "distill_rows"):
            value = getattr(self, name)
            if value.dtype != torch.bool or tuple(value.shape) != (b,):
                raise ValueError(f"{name} must be a [B={b}] bool tensor")
        mask = self.response_mask
        for name in ("old_logprobs", "token_advantages"):
            value = getattr(self, name)
            if value is not None and not torch.isfinite(value[mask]).all():
                raise ValueError(f"{name} is not finite on response tokens")
        for row in torch.nonzero(self.distill_rows).flatten().tolist():
            if self.teacher_prompts is None or self.teacher_prompts[row] is None:
                raise ValueError(f"distillation row {row} has no teacher prompt")

    def _check_reweighting(self, b: int, t: int) -> None:
        reweighting = self.reweighting
        if reweighting.advantages.shape[0] != b:
            raise ValueError(
                f"reweighting is for {reweighting.advantages.shape[0]} rollouts, expected {b}"
            )
        teacher = reweighting.teacher_logprobs
        rows = reweighting.has_teacher.nonzero().flatten().tolist()
        if teacher is None:  # the actor scores the teacher views: they must be there
            missing = [
                r for r in rows if self.teacher_prompts is None or not self.teacher_prompts[r]
            ]
            if missing:
                raise ValueError(f"reweighting: teacher rows {missing[:5]} have no teacher prompt")
            return
        if tuple(teacher.shape) != (b, t):
            raise ValueError(
                f"reweighting.teacher_logprobs has shape {tuple(teacher.shape)}, expected {(b, t)}"
            )
        used = self.response_mask & reweighting.has_teacher.unsqueeze(1)
        if not torch.isfinite(teacher[used]).all():
            raise ValueError("reweighting.teacher_logprobs is not finite on teacher rows")

    @property
    def response_mask(self) -> torch.Tensor:
        t = max(len(r) for r in self.responses)
        lengths = torch.tensor([len(r) for r in self.responses])
        return torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)


@dataclass(frozen=True, kw_only=True)
class UpdateConfig:
    """How one update runs.

    Attributes:
        method: registry name (grpo, rlrt, sdpo, ...).
        loss: the loss hyperparameters.
        mini_batches: optimizer steps per update (contiguous row ranges of the batch).
        max_tokens: padded-token budget of a micro-batch.
        topk: top-k of the distillation loss (methods with ``needs_topk``).
        srpo_beta: β of SRPO's entropy weights (methods with ``needs_teacher_entropy``).
        temperature: sampling temperature (logits are divided by it).
    """

    method: str
    loss: LossConfig = LossConfig()
    mini_batches: int = 1
    max_tokens: int = 8192
    topk: int = 100
    srpo_beta: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        get_method(self.method)
        if self.mini_batches < 1 or self.max_tokens < 1 or self.topk < 1:
            raise ValueError("mini_batches, max_tokens and topk must be >= 1")


BeforeMinibatch = Callable[[list[int]], dict[str, torch.Tensor] | None]


def train_step(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batch: TrainBatch,
    config: UpdateConfig,
    *,
    before_minibatch: BeforeMinibatch | None = None,
    after_optimizer_step: Callable[[], None] | None = None,
    teacher_swap: TeacherSwap | None = None,
) -> list[dict[str, float]]:
    """Run one update; returns one metrics dict per mini-batch (optimizer step).

    ``teacher_swap``: ``None`` when the distillation teacher uses the policy's current weights;
    else a context-manager factory putting the teacher's weights into the model (see the module
    docstring). Only methods with ``needs_topk`` read the teacher in the update.

    Every rank calls this with the same batch. Metrics (the same on every rank): ``loss`` (the
    mini-batch loss), ``grad_norm``, ``lr``, ``tokens`` (the normalizer's token count),
    ``skipped`` (1.0 when the step was skipped), ``nonfinite_loss``, ``microbatches`` (over all
    DP ranks), and the method's metrics
    (clip fractions, entropy, approx_kl, distill_*, ...) averaged over their tokens.
    """
    from megatron.core import parallel_state as mpu

    check_rollouts(batch.prompts, batch.responses, batch.teacher_prompts, model.vocab_size)
    b = len(batch.responses)
    if config.mini_batches > b:
        raise ValueError(f"{config.mini_batches} mini-batches for {b} rollouts")
    if batch.old_logprobs is None and config.mini_batches > 1:
        raise ValueError(
            "old_logprobs=None (π_old = the update's own forward) needs mini_batches=1: later "
            f"mini-batches run after an optimizer step; got mini_batches={config.mini_batches}"
        )
    spec = get_method(config.method)
    if spec.needs_topk and batch.distill_rows.any() and batch.teacher_prompts is None:
        raise ValueError(f"method {spec.name!r} needs teacher prompts for its distillation rows")
    dp = mpu.get_data_parallel_world_size()
    bounds = torch.linspace(0, b, config.mini_batches + 1).round().long().tolist()
    results = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        rows = list(range(start, end))
        if len(rows) < dp:
            raise ValueError(f"a mini-batch of {len(rows)} rollouts cannot feed {dp} DP ranks")
        mini = _select(batch, rows)
        if before_minibatch is not None:
            mini = replace(mini, **(before_minibatch(rows) or {}))
        metrics = _minibatch_step(model, optimizer, mini, config, teacher_swap)
        if not metrics["skipped"]:
            scheduler.step(1)
            if after_optimizer_step is not None:
                after_optimizer_step()
        results.append(metrics)
    return results


def _select(batch: TrainBatch, rows: list[int]) -> TrainBatch:
    """The rows ``rows`` of a batch, tensors cut to the rows' longest response."""
    index = torch.tensor(rows, dtype=torch.long)
    t = max(len(batch.responses[r]) for r in rows)

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[index, :t]

    return TrainBatch(
        prompts=[batch.prompts[r] for r in rows],
        responses=[batch.responses[r] for r in rows],
        old_logprobs=cut(batch.old_logprobs),
        token_advantages=cut(batch.token_advantages),
        pg_rows=batch.pg_rows[index],
        distill_rows=batch.distill_rows[index],
        rollout_logprobs=cut(batch.rollout_logprobs),
        teacher_prompts=None
        if batch.teacher_prompts is None
        else [batch.teacher_prompts[r] for r in rows],
        teacher_entropy=cut(batch.teacher_entropy),
        reweighting=None if batch.reweighting is None else batch.reweighting.select(index, t),
    )


def _minibatch_step(
    model, optimizer, mini: TrainBatch, config: UpdateConfig, teacher_swap: TeacherSwap | None
) -> dict[str, float]:
    from megatron.core import parallel_state as mpu

    spec = get_method(config.method)
    mask = mini.response_mask
    active = mask & (mini.pg_rows | mini.distill_rows).unsqueeze(1)
    if config.loss.aggregation == "token-mean":
        normalizer = float(active.sum())
    else:
        normalizer = float((active.sum(dim=1) > 0).sum())
    token_weights = None
    if spec.needs_teacher_entropy and mini.distill_rows.any():
        if mini.teacher_entropy is None:
            raise ValueError(f"method {spec.name!r} needs the teacher entropy")
        token_weights = srpo_token_weights(
            mini.teacher_entropy, mask & mini.distill_rows.unsqueeze(1), config.srpo_beta
        )

    teachers = None
    if spec.needs_topk and mini.teacher_prompts is not None:
        teachers = [
            t if bool(mini.distill_rows[i]) else None for i, t in enumerate(mini.teacher_prompts)
        ]
    # Rows without a loss term (e.g. SDPO rows with no teacher) need no forward, unless there
    # are too few rows left to give every DP rank one (megatron's DDP needs every rank to run).
    dp, dp_rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
    candidates = [i for i in range(len(mini.responses)) if bool(active[i].any())]
    if len(candidates) < dp:
        candidates = list(range(len(mini.responses)))
    costs = rollout_costs(mini.prompts, mini.responses, teachers)
    rows = [candidates[j] for j in dp_share([costs[i] for i in candidates], dp, dp_rank)]
    # A separate teacher only where a distillation row of this mini-batch reads it (on every
    # rank alike: all DP ranks take the same decision from the same mini-batch).
    separate = teacher_swap is not None and teachers is not None
    separate = separate and any(t is not None for t in teachers)
    microbatches = plan_microbatches(
        rows,
        mini.prompts,
        mini.responses,
        teachers,
        max_tokens=config.max_tokens,
        layout=SequenceLayout.of(model),
        separate_teacher=separate,
    )
    # Undo megatron's 1/(micro-batches of a schedule call) and DDP's 1/DP.
    scale = schedule_divisor(microbatches, separate) * dp
    record = _Record()

    def on_pair(mb: MicroBatch, student: torch.Tensor, teacher: torch.Tensor | None):
        loss, metrics, weight = _microbatch_loss(
            model, mb, student, teacher, mini, config, normalizer, token_weights
        )
        record.add(loss.detach(), metrics, weight)
        return loss * scale, {}

    for chunk in model.chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    if normalizer == 0:  # nothing to learn from: no step (weight decay alone would move θ)
        lr = float(optimizer.param_groups[0]["lr"])
        return {"skipped": 1.0, "tokens": 0.0, "loss": 0.0, "nonfinite_loss": 0.0, "lr": lr}
    run_pairs(
        model,
        microbatches,
        on_pair,
        forward_only=False,
        teacher_swap=teacher_swap if separate else None,
    )

    metrics = record.reduce(result_owner())
    optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    lr = float(optimizer.param_groups[0]["lr"])
    skip = metrics["nonfinite_loss"] > 0 or not math.isfinite(metrics["loss"])
    skip = skip or not math.isfinite(grad_norm)
    if skip:
        for chunk in model.chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
    else:
        ok, _, _ = optimizer.step()
        skip = not ok
    metrics.update(grad_norm=grad_norm, lr=lr, tokens=normalizer, skipped=float(skip))
    return metrics


def _microbatch_loss(
    model,
    mb: MicroBatch,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    mini: TrainBatch,
    config,
    normalizer,
    token_weights,
):
    """The method's loss on one micro-batch (last pipeline stage), with gradients, from its
    students' response logits [n_student_tokens, V_local] and its paired teachers'
    [n_teacher_tokens, V_local] (``paired`` order; a stop-gradient target)."""
    kw = vocab_kwargs(model, student_logits, config.temperature)
    dev = student_logits.device
    b = len(mb.rows)
    lengths = torch.tensor([len(mini.responses[r]) for r in mb.rows])
    t = int(lengths.max())
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).to(dev)
    # Flat [b·t] slots of the response tokens, in the order the logits are gathered.
    slots = torch.nonzero(mask.flatten()).flatten()
    target = torch.cat([torch.as_tensor(mini.responses[r]) for r in mb.rows]).to(dev)
    student = student_logits.index_select(0, mb.student_index().to(dev))
    lp_flat, ent_flat = vocab_parallel_log_prob_entropy(student, target, **kw)
    logprobs = _scatter(lp_flat, slots, (b, t))
    entropy = _scatter(ent_flat, slots, (b, t))

    index = torch.tensor(mb.rows, dtype=torch.long)

    def rows_of(x):
        return None if x is None else x[index, :t].to(dev)

    pg_rows = mini.pg_rows[index].to(dev)
    distill_rows = mini.distill_rows[index].to(dev)
    distill = None
    if mb.paired:
        k = config.topk
        pos = torch.tensor(mb.paired, dtype=torch.long)
        pair_mask = torch.zeros(b, t, dtype=torch.bool, device=dev)
        pair_mask[pos] = mask[pos]
        pair_slots = torch.nonzero(pair_mask.flatten()).flatten()
        view = vocab_parallel_topk(
            student_logits.index_select(0, mb.student_index(mb.paired).to(dev)),
            teacher_logits.detach(),
            k=k,
            **kw,
        )
        distill = DistillInputs(
            student_topk_logprobs=_scatter(view.student_log_prob, pair_slots, (b, t, k)),
            teacher_topk_logprobs=_scatter(view.teacher_log_prob, pair_slots, (b, t, k)),
            student_tail_logprob=_scatter(view.student_tail, pair_slots, (b, t)),
            teacher_tail_logprob=_scatter(view.teacher_tail, pair_slots, (b, t)),
            token_weights=rows_of(token_weights),
        )
    active = mask & (pg_rows | distill_rows).unsqueeze(1)
    weight = float(active.sum())
    if not torch.isfinite(logprobs[mask]).all():
        # Non-finite model output: keep the schedule going on every rank (the backward must
        # still run), flag the step as skipped.
        return logprobs.sum() * math.nan, {"nonfinite_loss": 1.0, "microbatches": 1.0}, weight
    # On-policy shortcut (TrainBatch.old_logprobs None): π_old is this forward's π_θ, detached.
    old = logprobs.detach() if mini.old_logprobs is None else rows_of(mini.old_logprobs)
    token_adv, reweight_sums = rows_of(mini.token_advantages), {}
    if mini.reweighting is not None:  # Eq. 6–7 with log P_S = this forward (detached)
        token_adv, reweight_sums = mini.reweighting.apply(config.method, index, logprobs, mask)
    loss, metrics = method_loss(
        config.method,
        logprobs=logprobs,
        old_logprobs=old,
        token_advantages=token_adv,
        response_mask=mask,
        pg_rows=pg_rows,
        distill_rows=distill_rows,
        config=config.loss,
        rollout_logprobs=rows_of(mini.rollout_logprobs),
        entropy=entropy,
        distill=distill,
        normalizer=normalizer,
    )
    metrics.update({f"reweight_{k}": v for k, v in reweight_sums.items()})
    metrics["nonfinite_loss"] = float(not torch.isfinite(loss))
    metrics["microbatches"] = 1.0
    return loss, metrics, weight


def _scatter(values: torch.Tensor, slots: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Concatenated per-token values [n, ...] into a zero [b, t, ...] tensor at the flat [b·t]
    ``slots`` (differentiable w.r.t. ``values``)."""
    flat = values.new_zeros(shape[0] * shape[1], *shape[2:])
    return flat.index_put((slots,), values).view(shape)


# Metric keys that are sums over micro-batches, and those that are maxima (the rest are
# token-weighted means).
_SUMMED = (
    "loss",
    "pg_tokens",
    "distill_tokens",
    "nonfinite_loss",
    "microbatches",
    *(f"reweight_{k}" for k in REWEIGHT_SUM_KEYS),
)
_MAXED = ("rollout_is_logprob_diff_max",)


class _Record:
    """Micro-batch metrics of one mini-batch, combined over micro-batches and DP ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, loss: torch.Tensor, metrics: dict[str, float], weight: float) -> None:
        metrics = {**metrics, "loss": float(loss)}
        for key, value in metrics.items():
            if key in _MAXED:
                self.sums[key] = max(self.sums.get(key, -math.inf), value)
                self.weights[key] = 1.0
                continue
            w = 1.0 if key in _SUMMED else _weight_of(key, metrics, weight)
            self.sums[key] = self.sums.get(key, 0.0) + w * value
            self.weights[key] = self.weights.get(key, 0.0) + w

    def reduce(self, owner: bool) -> dict[str, float]:
        """Combine the owners' records (last stage, TP rank 0 of each DP replica) on all ranks."""
        mine = (self.sums, self.weights) if owner else ({}, {})
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        for part_sums, part_weights in gathered:
            for key, value in part_sums.items():
                if key in _MAXED:
                    sums[key] = max(sums.get(key, -math.inf), value)
                    weights[key] = 1.0
                    continue
                sums[key] = sums.get(key, 0.0) + value
                weights[key] = weights.get(key, 0.0) + part_weights[key]
        out = {
            key: value if key in _SUMMED or key in _MAXED else value / max(weights[key], 1e-30)
            for key, value in sums.items()
        }
        out.setdefault("nonfinite_loss", 0.0)
        out.setdefault("loss", 0.0)
        return out


def _weight_of(key: str, metrics: dict[str, float], active_tokens: float) -> float:
    """Tokens a mean metric was taken over: policy-gradient or distillation tokens, else all
    active tokens of the micro-batch."""
    if key.startswith(("clipfrac", "approx_kl", "ratio_mean", "pg_")):
        return metrics.get("pg_tokens", active_tokens)
    if key.startswith("distill_"):
        return metrics.get("distill_tokens", active_tokens)
    return active_tokens
