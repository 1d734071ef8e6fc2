"""The DAPO clipped surrogate shared by every method, its aggregation, and the entropy bonus."""

from __future__ import annotations

from typing import Literal

import torch

from rlrt_megatron.algorithms._checks import (
    check_finite,
    check_mask,
    check_non_negative,
    check_shape,
    check_tensor,
)

Aggregation = Literal["token-mean", "seq-mean-token-mean"]
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean")

# exp() of a log-ratio beyond ±20 is never a meaningful probability ratio; clamping keeps the
# surrogate finite when a stale mini-batch meets a much-moved policy (the clip zeroes its grad).
_MAX_LOG_RATIO = 20.0


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    token-mean (DAPO, the paper):   Σ_{b,t} m·ℓ / N,  N = Σ m   (every token weighs the same)
    seq-mean-token-mean (GRPO):     Σ_b (Σ_t m·ℓ / Σ_t m) / N,  N = #rows

    ``normalizer`` overrides N. Under gradient accumulation or data parallelism pass the token (or
    row) count of the *whole* mini-batch, so that the accumulated gradient is exactly the
    mini-batch's mean rather than a mean of micro-batch means.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    mask = mask.to(loss_mat.dtype)
    if aggregation == "token-mean":
        total = (loss_mat * mask).sum()
        denominator = mask.sum() if normalizer is None else normalizer
    else:
        tokens_per_row = mask.sum(dim=-1)
        row_means = (loss_mat * mask).sum(dim=-1) / tokens_per_row.clamp(min=1)
        total = row_means[tokens_per_row > 0].sum()
        denominator = (tokens_per_row > 0).sum() if normalizer is None else normalizer
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.clamp(min=1)
    elif denominator <= 0:
        raise ValueError(f"normalizer must be > 0, got {denominator}")
    return total / denominator


def rollout_importance_weights(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    clip: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights that correct the inference engine's sampling mismatch.

    Shapes: [B, T] → ([B, T], metrics).   w_t = min(exp(log π_old(y_t) − log π_rollout(y_t)), C)

    π_old is the trainer's behaviour-policy log-prob, π_rollout what the engine (vLLM) reported
    when it sampled the token; they differ through kernels, precision and sampling processors. The
    weight is detached. Metrics: mean weight, the fraction of tokens truncated at C (before
    truncation) and the mean and max |log π_old − log π_rollout| (the trainer/engine agreement of
    `rlrt_megatron.cluster.agreement`, also where no separate scoring pass ran), all over
    response tokens.
    """
    mask = response_mask.bool()
    with torch.no_grad():
        log_w = (old_logprobs - rollout_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        raw = torch.exp(log_w)
        weights = raw.clamp(max=clip)
        n = mask.sum().clamp(min=1)
        diff = torch.where(mask, (old_logprobs - rollout_logprobs).abs(), 0.0)
        metrics = {
            "rollout_is_weight_mean": ((weights * mask).sum() / n).item(),
            "rollout_is_clipped_frac": (((raw > clip) & mask).sum() / n).item(),
            "rollout_is_logprob_diff_mean": (diff.sum() / n).item(),
            "rollout_is_logprob_diff_max": diff.max().item() if diff.numel() else 0.0,
        }
    return weights.detach(), metrics


def policy_loss_per_token(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    rollout_logprobs: torch.Tensor | None = None,
    rollout_is_clip: float | None = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The per-token DAPO surrogate ℓ_t [B, T] (before aggregation) and its metrics.

    See `policy_loss` for the equation; rows may have no response tokens here (callers route
    subsets of rows through a mask).
    """
    check_tensor("logprobs", logprobs, ndim=2)
    shape = tuple(logprobs.shape)
    for name, x in (("old_logprobs", old_logprobs), ("advantages", advantages)):
        check_tensor(name, x, ndim=2)
        check_shape(name, x, shape)
    check_tensor("response_mask", response_mask, ndim=2)
    check_shape("response_mask", response_mask, shape)
    check_mask("response_mask", response_mask, require_tokens_per_row=False)
    check_non_negative("clip_low", clip_low)
    check_non_negative("clip_high", clip_high)
    if clip_low >= 1.0:
        raise ValueError(f"clip_low must be < 1, got {clip_low}")
    mask = response_mask.bool()
    for name, x in (
        ("logprobs", logprobs),
        ("old_logprobs", old_logprobs),
        ("advantages", advantages),
    ):
        check_finite(name, x, where=mask)

    log_ratio = (logprobs - old_logprobs.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)

    metrics: dict[str, float] = {}
    if rollout_logprobs is not None:
        check_tensor("rollout_logprobs", rollout_logprobs, ndim=2)
        check_shape("rollout_logprobs", rollout_logprobs, shape)
        check_finite("rollout_logprobs", rollout_logprobs, where=mask)
        if rollout_is_clip is not None:
            check_non_negative("rollout_is_clip", rollout_is_clip)
            is_weights, is_metrics = rollout_importance_weights(
                old_logprobs, rollout_logprobs, response_mask, rollout_is_clip
            )
            per_token = per_token * is_weights
            metrics.update(is_metrics)

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        # The clip is active (gradient zero) where the clipped branch is the larger loss.
        high = (adv > 0) & (ratio > 1.0 + clip_high) & mask
        low = (adv < 0) & (ratio < 1.0 - clip_low) & mask
        # k3 estimator of KL(π_old ‖ π): E_old[r − 1 − log r], r = π/π_old; ≥ 0, low variance.
        k3 = (ratio - 1.0) - log_ratio
        metrics.update(
            clipfrac_high=(high.sum() / n).item(),
            clipfrac_low=(low.sum() / n).item(),
            clipfrac=((high | low).sum() / n).item(),
            approx_kl=((k3 * mask).sum() / n).item(),
            ratio_mean=((ratio * mask).sum() / n).item(),
        )
    return per_token, metrics


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    rollout_logprobs: torch.Tensor | None = None,
    rollout_is_clip: float | None = 2.0,
    aggregation: Aggregation = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DAPO clip-higher surrogate with truncated rollout importance correction.

    Shapes: ``logprobs`` (current policy, with grad), ``old_logprobs`` (behaviour policy),
    ``advantages`` (token advantages A_t), ``response_mask``, ``rollout_logprobs`` (engine): all
    [B, T] → (scalar loss, metrics).

        r_t  = exp(log π(y_t) − log π_old(y_t))
        ℓ_t  = −min(r_t·A_t, clip(r_t, 1−ε_low, 1+ε_high)·A_t) · w_t
        w_t  = min(exp(log π_old(y_t) − log π_rollout(y_t)), C)
        loss = aggregate(ℓ, mask)          (token-mean: the paper; seq-mean-token-mean: GRPO's)

    with ε_low = 0.2, ε_high = 0.28 (DAPO clip-higher), C = 2 (the IS weight is detached; pass
    ``rollout_is_clip=None`` to disable it; without ``rollout_logprobs`` there is no correction).
    No KL term. ``normalizer``: see `aggregate`.

    Metrics: clipfrac_low / clipfrac_high / clipfrac (fraction of response tokens whose clip is
    active), approx_kl (k3 estimate of KL(π_old‖π)), ratio_mean, and with rollout log-probs
    rollout_is_weight_mean / rollout_is_clipped_frac. Each row must hold a response token.
    """
    check_tensor("response_mask", response_mask, ndim=2)
    check_mask("response_mask", response_mask)
    per_token, metrics = policy_loss_per_token(
        logprobs,
        old_logprobs,
        advantages,
        response_mask,
        clip_low=clip_low,
        clip_high=clip_high,
        rollout_logprobs=rollout_logprobs,
        rollout_is_clip=rollout_is_clip,
    )
    loss = aggregate(per_token, response_mask, aggregation, normalizer)
    metrics["pg_loss"] = loss.item()
    return loss, metrics


def entropy_bonus(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    coef: float,
    aggregation: Aggregation = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """The GRPO+EB entropy bonus as a loss term: −coef · aggregate(H_t).

    ``entropy`` [B, T]: per-token entropy H_t = −Σ_v π(v|·) log π(v|·) of the current policy, with
    gradient. Minimising the returned term maximises entropy. ``coef`` ≥ 0.
    """
    check_tensor("entropy", entropy, ndim=2)
    check_shape("response_mask", response_mask, entropy.shape)
    check_non_negative("coef", coef)
    check_finite("entropy", entropy, where=response_mask.bool())
    return -coef * aggregate(entropy, response_mask, aggregation, normalizer)
