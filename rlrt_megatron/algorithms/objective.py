"""One loss function for every method, driven by the registry (the trainer's single entry point).

`method_loss` assembles a method's objective from the pure terms in `losses` and `distillation`:

    L = [ Σ_{pg rows, t} ℓ^PG_t + Σ_{distill rows, t} ℓ^SD_t ] / N  −  c_H · mean_t H_t

with N the number of response tokens of the rows that carry a term (SRPO's shared token-mean,
arXiv 2604.02288 Eq. 9; for a single-term method it is the plain token-mean), ℓ^PG the DAPO
surrogate on the token advantages, ℓ^SD the SDPO generalized JS (SRPO: times its entropy weights),
and the entropy bonus only where the method asks for it (GRPO+EB with ``entropy_form: loss``;
its default advantage form, Cheng et al.'s A_t + min(α·H_t, |A_t|/κ), is already in the token
advantages: `rlrt_megatron.algorithms.entropy_advantage`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlrt_megatron.algorithms._checks import check_bool, check_shape, check_tensor
from rlrt_megatron.algorithms.distillation import sdpo_loss_per_token
from rlrt_megatron.algorithms.losses import (
    AGGREGATIONS,
    Aggregation,
    aggregate,
    entropy_bonus,
    policy_loss_per_token,
    rollout_importance_weights,
)
from rlrt_megatron.algorithms.registry import MethodSpec, get_method


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Loss hyperparameters shared by all methods (paper Table 5 defaults)."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    rollout_is_clip: float | None = 2.0
    """Truncation C of the rollout importance weight; None disables the correction."""
    aggregation: Aggregation = "token-mean"
    entropy_coef: float = 0.0
    """Coefficient of the loss-form entropy bonus; used only by methods with
    ``needs_student_entropy`` (0 when GRPO+EB uses the advantage form, `entropy_advantage`)."""
    distill_alpha: float = 0.5
    distill_is_clip: float | None = 2.0
    """Truncation of the off-policy ratio π/π_old inside the distillation loss."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")


@dataclass(kw_only=True)
class DistillInputs:
    """Top-k views for the distillation loss (shapes [B, T, k] and [B, T])."""

    student_topk_logprobs: torch.Tensor
    teacher_topk_logprobs: torch.Tensor
    student_tail_logprob: torch.Tensor | None = None
    teacher_tail_logprob: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    """SRPO entropy weights [B, T] (from `srpo_token_weights` over the whole mini-batch)."""


def method_loss(
    method: str | MethodSpec,
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    token_advantages: torch.Tensor,
    response_mask: torch.Tensor,
    pg_rows: torch.Tensor,
    distill_rows: torch.Tensor,
    config: LossConfig,
    rollout_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    distill: DistillInputs | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """A method's full loss on one (micro-)batch.

    Shapes: ``logprobs`` (grad), ``old_logprobs``, ``token_advantages``, ``response_mask``,
    ``rollout_logprobs``, ``entropy`` (grad): [B, T]; ``pg_rows``/``distill_rows`` [B] bool from
    `registry.policy_gradient_rows` / `registry.distillation_rows`; ``distill`` needed when any
    distillation row is present. ``normalizer``: the token (or, for seq-mean-token-mean, row)
    count of the whole mini-batch under accumulation — by default that of this batch's rows
    carrying a term.

    Returns (loss, metrics). Metrics hold the terms' statistics (pg_*, clipfrac*, approx_kl,
    distill_*, entropy, rollout_is_*), each over the tokens of the term it describes.
    """
    spec = get_method(method) if isinstance(method, str) else method
    check_tensor("response_mask", response_mask, ndim=2)
    batch = response_mask.shape[0]
    for name, rows in (("pg_rows", pg_rows), ("distill_rows", distill_rows)):
        check_tensor(name, rows, ndim=1)
        check_bool(name, rows)
        check_shape(name, rows, (batch,))
    if (pg_rows & distill_rows).any():
        raise ValueError("pg_rows and distill_rows overlap: each row carries one loss term")
    mask = response_mask.bool()
    pg_mask = mask & pg_rows.unsqueeze(-1)
    sd_mask = mask & distill_rows.unsqueeze(-1)
    active = pg_mask | sd_mask

    metrics: dict[str, float] = {}
    per_token = torch.zeros_like(logprobs)
    is_weights = None
    if rollout_logprobs is not None and config.rollout_is_clip is not None:
        check_shape("rollout_logprobs", rollout_logprobs, logprobs.shape)
        is_weights, is_metrics = rollout_importance_weights(
            old_logprobs, rollout_logprobs, active, config.rollout_is_clip
        )
        metrics.update(is_metrics)

    if pg_mask.any():
        pg, pg_metrics = policy_loss_per_token(
            logprobs,
            old_logprobs,
            token_advantages,
            pg_mask,
            clip_low=config.clip_low,
            clip_high=config.clip_high,
        )
        if is_weights is not None:
            pg = pg * is_weights
        per_token = per_token + torch.where(pg_mask, pg, torch.zeros_like(pg))
        metrics.update(pg_metrics)
        metrics["pg_tokens"] = float(pg_mask.sum().item())

    if sd_mask.any():
        if distill is None:
            raise ValueError(f"method {spec.name!r} routes rows to distillation: pass `distill`")
        sd = sdpo_loss_per_token(
            distill.student_topk_logprobs,
            distill.teacher_topk_logprobs,
            student_tail_logprob=distill.student_tail_logprob,
            teacher_tail_logprob=distill.teacher_tail_logprob,
            alpha=config.distill_alpha,
            logprobs=logprobs,
            old_logprobs=old_logprobs,
            is_clip=config.distill_is_clip,
            rollout_is_weights=is_weights,
        )
        if distill.token_weights is not None:
            check_shape("distill.token_weights", distill.token_weights, sd.shape)
            sd = sd * distill.token_weights.detach()
        per_token = per_token + torch.where(sd_mask, sd, torch.zeros_like(sd))
        with torch.no_grad():
            metrics["distill_js_mean"] = (sd[sd_mask].mean()).item()
            metrics["distill_tokens"] = float(sd_mask.sum().item())

    loss = aggregate(per_token, active, config.aggregation, normalizer)
    if spec.needs_student_entropy and config.entropy_coef > 0:  # GRPO+EB's loss form
        if entropy is None:
            raise ValueError(f"method {spec.name!r} needs the per-token `entropy`")
        loss = loss + entropy_bonus(
            entropy, response_mask, config.entropy_coef, config.aggregation, normalizer
        )
    if entropy is not None:
        with torch.no_grad():
            metrics["entropy"] = entropy[mask].mean().item()
    metrics["loss"] = loss.item()
    return loss, metrics
