"""Distribution shift of a fine-tuned policy from its base model (paper Figure 7).

At each position of the fine-tuned model's own rollouts, compare π_ft(·|h_t) with π_base(·|h_t):
the Jensen–Shannon divergence, its complementary CDF over positions, how much of the top-k the two
share where they differ (JS > 0.1), and whether the new top-1 token was in the base model's tail
(base probability below 1e-1, 1e-2, …): did RL re-rank existing candidates or promote new ones?
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlrt_megatron.algorithms.distillation import generalized_js


def _check_pair(finetuned: torch.Tensor, base: torch.Tensor) -> None:
    if finetuned.shape != base.shape:
        raise ValueError(
            f"fine-tuned and base log-probs differ in shape: {tuple(finetuned.shape)} vs "
            f"{tuple(base.shape)} (different vocabularies cannot be compared)"
        )


def js_per_position(finetuned_logprobs: torch.Tensor, base_logprobs: torch.Tensor) -> torch.Tensor:
    """JS(π_ft ‖ π_base) per position, in nats: [..., V] log-probs → [...]."""
    _check_pair(finetuned_logprobs, base_logprobs)
    return generalized_js(finetuned_logprobs, base_logprobs, 0.5)


def ccdf(values: torch.Tensor, thresholds: Sequence[float]) -> list[float]:
    """Fraction of values strictly greater than each threshold (the complementary CDF)."""
    flat = values.flatten()
    if flat.numel() == 0:
        raise ValueError("ccdf of an empty set of values")
    return [float((flat > t).float().mean()) for t in thresholds]


def topk_overlap(
    finetuned_logprobs: torch.Tensor, base_logprobs: torch.Tensor, k: int
) -> torch.Tensor:
    """|top-k(π_ft) ∩ top-k(π_base)| / k per position: [..., V] → [...] in [0, 1]."""
    _check_pair(finetuned_logprobs, base_logprobs)
    if not 1 <= k <= finetuned_logprobs.shape[-1]:
        raise ValueError(f"k must be in [1, {finetuned_logprobs.shape[-1]}], got {k}")
    ft = finetuned_logprobs.topk(k, dim=-1).indices
    base = base_logprobs.topk(k, dim=-1).indices
    shared = (ft.unsqueeze(-1) == base.unsqueeze(-2)).any(dim=-1).sum(dim=-1)
    return shared.float() / k


def tail_promotion(
    finetuned_logprobs: torch.Tensor,
    base_logprobs: torch.Tensor,
    thresholds: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4),
) -> list[float]:
    """For each threshold τ, the fraction of positions whose fine-tuned top-1 token had base
    probability below τ: [..., V] log-probs → one fraction per threshold."""
    _check_pair(finetuned_logprobs, base_logprobs)
    top1 = finetuned_logprobs.argmax(dim=-1, keepdim=True)
    base_prob = base_logprobs.gather(-1, top1).squeeze(-1).exp().flatten()
    if base_prob.numel() == 0:
        raise ValueError("no positions to analyse")
    return [float((base_prob < t).float().mean()) for t in thresholds]
