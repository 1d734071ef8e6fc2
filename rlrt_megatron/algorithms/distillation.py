"""Self-distillation losses: SDPO's generalized Jensen–Shannon over top-k + tail, SRPO's weights.

SDPO (Hübotter et al. 2026): the teacher is the same model conditioned on a correct peer rollout;
the student is distilled towards it on the student's own tokens. Per response position the two
distributions are compared on the student's top-k tokens plus one bucket holding all remaining
mass, so the full [T, V] distributions never need to be stored.

SRPO (Li et al. 2026, arXiv 2604.02288 §3): routes incorrect rollouts that have a teacher to the
SDPO loss and everything else to GRPO, down-weighting high-entropy teacher positions.
"""

from __future__ import annotations

import math

import torch

from rlrt_megatron.algorithms._checks import (
    check_finite,
    check_non_negative,
    check_shape,
    check_tensor,
    check_unit_interval,
)
from rlrt_megatron.algorithms.losses import Aggregation, aggregate

# A bucket with (numerically) no mass gets this log-probability instead of −inf, so that
# p·(log p − log m) is 0·finite = 0 rather than 0·(−inf) = NaN in values *and* gradients. e^-60 is
# far below float32 resolution of 1, so the normalisation error is invisible.
LOG_PROB_FLOOR = -60.0


def topk_with_tail(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k + tail view of two full distributions (single-process reference implementation).

    Shapes: full log-probs [..., V] → (ids [..., k], student_topk [..., k], student_tail [...],
    teacher_topk [..., k], teacher_tail [...]).

    The ids are the *student's* top-k; the teacher is read at the same ids. Each tail is the exact
    log of the remaining mass, log Σ_{v ∉ top-k} p(v) (a logsumexp over the complement, not
    log(1 − Σ p_topk), which cancels catastrophically when the top-k holds almost all the mass).
    The distributed actor computes the same quantities across vocab shards in chunks.
    """
    if k < 1 or k > student_logprobs.shape[-1]:
        raise ValueError(f"k must be in [1, {student_logprobs.shape[-1]}], got {k}")
    check_shape("teacher_logprobs", teacher_logprobs, student_logprobs.shape)
    student_topk, ids = student_logprobs.topk(k, dim=-1)
    teacher_topk = teacher_logprobs.gather(-1, ids)
    in_topk = torch.zeros_like(student_logprobs, dtype=torch.bool).scatter_(-1, ids, True)
    student_tail = student_logprobs.masked_fill(in_topk, -math.inf).logsumexp(-1)
    teacher_tail = teacher_logprobs.masked_fill(in_topk, -math.inf).logsumexp(-1)
    return ids, student_topk, student_tail, teacher_topk, teacher_tail


def tail_from_topk(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ_k p_k) from top-k log-probs [..., k] → [...]. Accurate only when the tail is not
    tiny; prefer a tail computed from the logits (see `topk_with_tail`)."""
    log_covered = topk_logprobs.logsumexp(-1).clamp(max=-1e-12)
    return torch.log(-torch.expm1(log_covered))


def generalized_js(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """Generalized Jensen–Shannon divergence between two distributions given as log-probs [..., n].

        M   = (1−α)·P_S + α·P_T
        GJS = (1−α)·KL(P_S ‖ M) + α·KL(P_T ‖ M)          0 < α < 1   (α = 0.5: symmetric JS)
        α = 0: KL(P_T ‖ P_S) (forward);  α = 1: KL(P_S ‖ P_T) (reverse)  (as SDPO's reference)

    Returns [...]. Gradients flow into both arguments; detach the teacher before calling.
    """
    check_unit_interval("alpha", alpha)
    s = student_logp.clamp(min=LOG_PROB_FLOOR)
    t = teacher_logp.clamp(min=LOG_PROB_FLOOR)
    if alpha == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if alpha == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logaddexp(s + math.log1p(-alpha), t + math.log(alpha))
    kl_s = (s.exp() * (s - m)).sum(-1)
    kl_t = (t.exp() * (t - m)).sum(-1)
    return (1.0 - alpha) * kl_s + alpha * kl_t


def sdpo_loss_per_token(
    student_topk_logprobs: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    *,
    student_tail_logprob: torch.Tensor | None = None,
    teacher_tail_logprob: torch.Tensor | None = None,
    alpha: float = 0.5,
    logprobs: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    is_clip: float | None = 2.0,
    rollout_is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPO's per-token distillation loss ℓ_t [B, T] (see `sdpo_distillation_loss`)."""
    check_tensor("student_topk_logprobs", student_topk_logprobs, ndim=3)
    shape = tuple(student_topk_logprobs.shape)
    check_tensor("teacher_topk_logprobs", teacher_topk_logprobs, ndim=3)
    check_shape("teacher_topk_logprobs", teacher_topk_logprobs, shape)
    if student_tail_logprob is None:
        student_tail_logprob = tail_from_topk(student_topk_logprobs)
    if teacher_tail_logprob is None:
        teacher_tail_logprob = tail_from_topk(teacher_topk_logprobs)
    check_shape("student_tail_logprob", student_tail_logprob, shape[:2])
    check_shape("teacher_tail_logprob", teacher_tail_logprob, shape[:2])
    student = torch.cat([student_topk_logprobs, student_tail_logprob.unsqueeze(-1)], dim=-1)
    teacher = torch.cat([teacher_topk_logprobs, teacher_tail_logprob.unsqueeze(-1)], dim=-1)
    per_token = generalized_js(student, teacher.detach(), alpha)
    if is_clip is not None and logprobs is not None:
        if old_logprobs is None:
            raise ValueError("old_logprobs is required with logprobs for the distillation IS ratio")
        check_shape("logprobs", logprobs, shape[:2])
        check_shape("old_logprobs", old_logprobs, shape[:2])
        check_non_negative("is_clip", is_clip)
        # Off-policy mini-batches: weight by the truncated ratio π/π_old, detached (as SDPO's code).
        log_ratio = (logprobs - old_logprobs).detach().clamp(-20.0, 20.0)
        per_token = per_token * torch.exp(log_ratio).clamp(max=is_clip)
    if rollout_is_weights is not None:
        check_shape("rollout_is_weights", rollout_is_weights, shape[:2])
        per_token = per_token * rollout_is_weights.detach()
    return per_token


def sdpo_distillation_loss(
    student_topk_logprobs: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    student_tail_logprob: torch.Tensor | None = None,
    teacher_tail_logprob: torch.Tensor | None = None,
    alpha: float = 0.5,
    logprobs: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    is_clip: float | None = 2.0,
    rollout_is_weights: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    aggregation: Aggregation = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SDPO's self-distillation loss: generalized JS over the student's top-k plus a tail bucket.

    Shapes: ``student_topk_logprobs`` [B, T, k] (with grad), ``teacher_topk_logprobs`` [B, T, k]
    (teacher log-probs at the *student's* top-k ids; detached here), tails [B, T] (log of the
    remaining mass; derived from the top-k when omitted), ``response_mask`` [B, T]
    → (loss, metrics).

        P̃_S = (p_S(v_1..v_k), 1 − Σ_k p_S),  P̃_T = (p_T(v_1..v_k), 1 − Σ_k p_T)
        ℓ_t  = GJS_α(P̃_S ‖ P̃_T) · min(π/π_old, is_clip)_sg · w^IS_t · w^SRPO_t
        loss = aggregate(ℓ, mask)

    With k = V (and tails of zero mass) this equals the full-vocabulary generalized JS. α = 0.5,
    k = 100 in SDPO and SRPO. ``logprobs``/``old_logprobs`` [B, T] enable the clipped off-policy
    ratio; ``rollout_is_weights`` [B, T] the engine-mismatch correction; ``token_weights`` [B, T]
    SRPO's entropy weights (`srpo_token_weights`). Rows without a teacher must be masked out by
    the caller (their teacher inputs are meaningless).
    """
    per_token = sdpo_loss_per_token(
        student_topk_logprobs,
        teacher_topk_logprobs,
        student_tail_logprob=student_tail_logprob,
        teacher_tail_logprob=teacher_tail_logprob,
        alpha=alpha,
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        is_clip=is_clip,
        rollout_is_weights=rollout_is_weights,
    )
    check_shape("response_mask", response_mask, per_token.shape)
    if token_weights is not None:
        check_shape("token_weights", token_weights, per_token.shape)
        per_token = per_token * token_weights.detach()
    mask = response_mask.bool()
    check_finite("sdpo loss", per_token, where=mask)
    loss = aggregate(per_token, response_mask, aggregation, normalizer)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "distill_loss": loss.item(),
            "distill_js_mean": ((per_token * mask).sum() / n).item(),
            "distill_tokens": float(mask.sum().item()),
        }
    return loss, metrics


def srpo_token_weights(
    teacher_entropy: torch.Tensor, distill_mask: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """SRPO's entropy-aware dynamic weights (arXiv 2604.02288, §3.2).

    Shapes: ``teacher_entropy`` [B, T] (H_t of the teacher view, nats), ``distill_mask`` [B, T]
    (the response tokens routed to the distillation loss) → [B, T], detached.

        w̃_t = exp(−β·H_t),     w_t = w̃_t / mean_{(j,s) ∈ Ω_sdpo} w̃_{j,s}

    normalised to mean 1 over all distillation tokens of the batch, which keeps the loss scale;
    confident (low-entropy) teacher positions weigh more. β = 0 gives all-ones. Positions outside
    the mask are 0. Call it on the whole mini-batch, not per micro-batch, so the mean is the
    paper's. A mask with no token returns all zeros.
    """
    check_tensor("teacher_entropy", teacher_entropy, ndim=2)
    check_shape("distill_mask", distill_mask, teacher_entropy.shape)
    check_non_negative("beta", beta)
    mask = distill_mask.bool()
    check_finite("teacher_entropy", teacher_entropy, where=mask)
    with torch.no_grad():
        # Shift by the minimum entropy before exp: the ratio is unchanged, underflow impossible.
        h = teacher_entropy.masked_fill(~mask, math.inf)
        if not mask.any():
            return torch.zeros_like(teacher_entropy)
        raw = torch.exp(-beta * (h - h.min())).masked_fill(~mask, 0.0)
        return raw / (raw.sum() / mask.sum())
