"""GRPO+EB's entropy term in the advantage (Cheng et al., reference [3] of the RLRT paper).

Cheng, Huang, Zhu, Dai, Zhao, Zhang, Wei, "Reasoning with Exploration: An Entropy Perspective"
(arXiv 2506.14758, AAAI 2026), §3: instead of a maximum-entropy loss term, add a detached,
clipped entropy term to each token's advantage:

    ψ(H_t) = min( α · H_t^detach , |A_t| / κ ),      α > 0, κ > 1
    A_t'   = A_t + ψ(H_t)

H_t is the policy's entropy at token t with no gradient (the term only rescales the policy
gradient; it is not optimised itself). The clip |A_t|/κ keeps the term below the advantage's own
magnitude, so it never flips the sign of A_t: on a negative advantage it only softens the
penalty of high-entropy tokens, and where A_t = 0 (a group whose rewards are all equal) it is 0.
Defaults α = 0.4, κ = 2 (``algorithm.entropy_alpha`` / ``entropy_kappa``; registry defaults of
``grpo_eb``): the values Cheng et al. report for their experiments, as recalled when this was
written (the PDF was not at hand to re-check); the RLRT paper's Table 5 gives none.

Which policy's entropy: this project uses the scoring pass's (θ_old, the policy that sampled the
step, computed with the old log-probs). It equals the current policy's at the first mini-batch of
a step and lags it by one optimizer step at the second; the RLRT paper leaves this open.
"""

from __future__ import annotations

import torch

from rlrt_megatron.algorithms._checks import check_finite, check_mask, check_shape, check_tensor


def entropy_advantage_term(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    alpha: float,
    kappa: float,
) -> torch.Tensor:
    """ψ(H_t) = min(α·H_t, |A_t|/κ) per token: [B, T], 0 outside ``response_mask``.

    Shapes: ``advantages`` A_t [B, T] (the token advantages before the term), ``entropy`` H_t
    [B, T] in nats (detached here), ``response_mask`` [B, T] 0/1. ``alpha`` ≥ 0, ``kappa`` > 1.
    """
    check_tensor("advantages", advantages, ndim=2)
    check_tensor("entropy", entropy, ndim=2)
    check_tensor("response_mask", response_mask, ndim=2)
    check_shape("entropy", entropy, advantages.shape)
    check_shape("response_mask", response_mask, advantages.shape)
    check_mask("response_mask", response_mask, require_tokens_per_row=False)
    if not alpha >= 0.0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not kappa > 1.0:
        raise ValueError(f"kappa must be > 1 (the term must stay below |A_t|), got {kappa}")
    mask = response_mask.bool()
    check_finite("advantages", advantages, where=mask)
    check_finite("entropy", entropy, where=mask)
    if (entropy.detach()[mask] < 0).any():
        raise ValueError("entropy must be >= 0 on response tokens")
    h = entropy.detach().to(advantages.dtype)
    term = torch.minimum(alpha * h, advantages.detach().abs() / kappa)
    return torch.where(mask, term, torch.zeros_like(term))


def entropy_shaped_advantages(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    alpha: float,
    kappa: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """A_t' = A_t + ψ(H_t) (see the module doc) and its metrics.

    Returns ``(A', metrics)``: A' [B, T] (0 outside the mask), metrics ``bonus_mean`` (mean ψ over
    response tokens) and ``clipped_fraction`` (share of response tokens with A_t ≠ 0 where the
    |A_t|/κ bound is the smaller one).
    """
    term = entropy_advantage_term(advantages, entropy, response_mask, alpha=alpha, kappa=kappa)
    mask = response_mask.bool()
    shaped = torch.where(mask, advantages + term, torch.zeros_like(advantages))
    moving = mask & (advantages != 0)
    clipped = moving & (alpha * entropy.detach().to(advantages.dtype) > advantages.abs() / kappa)
    metrics = {
        "bonus_mean": float(term[mask].mean()) if mask.any() else 0.0,
        "clipped_fraction": float(clipped.sum() / moving.sum()) if moving.any() else 0.0,
    }
    return shaped, metrics
