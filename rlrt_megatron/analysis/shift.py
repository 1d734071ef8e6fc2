"""Distribution shift of a fine-tuned policy from its base model (paper Figure 7).

At each position of the fine-tuned model's own rollouts, compare π_ft(·|h_t) with π_base(·|h_t):
the Jensen–Shannon divergence, its complementary CDF over positions, how much of the top-k the two
share where they differ (JS > 0.1), and whether the new top-1 token was in the base model's tail
(base probability below 1e-1, 1e-2, …): did RL re-rank existing candidates or promote new ones?

The paper runs this on "30 prompts with n_correct ∈ {0, 1, 2} out of 8 under π_base":
:func:`select_problems` picks them from the base model's graded rollouts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch

from rlrt_megatron.algorithms.distillation import generalized_js

# The paper's prompt selection for Figure 7: 30 prompts the base model solves 0-2 times of 8.
PAPER_SHIFT_PROMPTS = 30
PAPER_SHIFT_CORRECT = (0, 1, 2)
PAPER_SHIFT_GROUP_SIZE = 8


def select_problems(
    counts: Mapping[str, tuple[int, int]],
    *,
    correct: Sequence[int] = PAPER_SHIFT_CORRECT,
    group_size: int | None = PAPER_SHIFT_GROUP_SIZE,
    count: int = PAPER_SHIFT_PROMPTS,
    seed: int = 0,
) -> tuple[list[str], int]:
    """Figure 7's prompts: ``count`` problems whose number of correct base-model rollouts (out of
    ``group_size``) is in ``correct``.

    ``counts``: {problem: (correct rollouts, rollouts)} under π_base, in file order. The paper
    does not say how its 30 were drawn from the eligible ones: here uniformly without
    replacement with ``seed`` (a documented setting), returned in file order. ``count`` 0 takes
    every eligible problem. Returns (selected problems, number eligible). ValueError when a
    problem has another number of rollouts than ``group_size`` (None: any), or fewer problems
    are eligible than ``count``.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    eligible = []
    for problem, (n_correct, n) in counts.items():
        if n < 1 or not 0 <= n_correct <= n:
            raise ValueError(f"problem {problem}: bad correct count {n_correct} of {n}")
        if group_size is not None and n != group_size:
            raise ValueError(
                f"problem {problem}: {n} base rollouts, but the selection counts correct rollouts "
                f"out of {group_size}"
            )
        if n_correct in correct:
            eligible.append(problem)
    if count > len(eligible):
        raise ValueError(
            f"only {len(eligible)} problems have n_correct in {sorted(correct)} under the base "
            f"model, fewer than the {count} asked for"
        )
    if count == 0:
        return eligible, len(eligible)
    chosen = set(random.Random(seed).sample(eligible, count))
    return [p for p in eligible if p in chosen], len(eligible)


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


def overlap_from_ids(ft_ids: torch.Tensor, base_ids: torch.Tensor, k: int) -> torch.Tensor:
    """|top-k(π_ft) ∩ top-k(π_base)| / k per position from sorted top-K id lists (K ≥ k):
    [..., K] int ids (largest first) → [...] in [0, 1]. Equals :func:`topk_overlap` on the full
    distributions when the ids are their top-K."""
    if ft_ids.shape != base_ids.shape:
        raise ValueError(f"id shapes differ: {tuple(ft_ids.shape)} vs {tuple(base_ids.shape)}")
    if not 1 <= k <= ft_ids.shape[-1]:
        raise ValueError(f"k must be in [1, {ft_ids.shape[-1]}], got {k}")
    ft, base = ft_ids[..., :k], base_ids[..., :k]
    return (ft.unsqueeze(-1) == base.unsqueeze(-2)).any(dim=-1).sum(dim=-1).float() / k


def summarize_shift(
    js: torch.Tensor,
    ft_topk_ids: torch.Tensor,
    base_topk_ids: torch.Tensor,
    base_log_prob_of_ft_top1: torch.Tensor,
    *,
    js_threshold: float = 0.1,
    tail_thresholds: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4),
    ccdf_grid: Sequence[float] | None = None,
) -> dict:
    """Figure 7's numbers from per-position statistics of N positions.

    Shapes: ``js`` [N]; ``ft_topk_ids`` / ``base_topk_ids`` [N, K]; ``base_log_prob_of_ft_top1``
    [N] (log π_base of π_ft's top-1 token). Returns the JS CCDF on ``ccdf_grid``, and at the
    positions with JS > ``js_threshold``: the mean top-k overlap for k = 1..K and the fraction
    whose fine-tuned top-1 had base probability below each tail threshold.
    """
    n = js.numel()
    if n == 0:
        raise ValueError("no positions to analyse")
    grid = list(ccdf_grid) if ccdf_grid is not None else [i * 0.025 for i in range(28)]
    shifted = js > js_threshold
    m = int(shifted.sum())
    k_max = ft_topk_ids.shape[-1]
    summary = {
        "positions": n,
        "js_mean": float(js.mean()),
        "js_threshold": js_threshold,
        "shifted_positions": m,
        "shifted_fraction": m / n,
        "ccdf": {"js": grid, "fraction_above": ccdf(js, grid)},
        "topk_overlap": {"k": list(range(1, k_max + 1)), "mean_overlap": None},
        "tail_promotion": {"thresholds": list(tail_thresholds), "fraction_below": None},
    }
    if m:
        ft, base = ft_topk_ids[shifted], base_topk_ids[shifted]
        summary["topk_overlap"]["mean_overlap"] = [
            float(overlap_from_ids(ft, base, k).mean()) for k in range(1, k_max + 1)
        ]
        prob = base_log_prob_of_ft_top1[shifted].exp()
        summary["tail_promotion"]["fraction_below"] = [
            float((prob < t).float().mean()) for t in tail_thresholds
        ]
    return summary


def shift_plot(summaries: dict[str, dict]):
    """Figure 7 with one line per fine-tuned checkpoint: the JS CCDF, the top-k overlap at
    shifted positions, and the tail-promotion fractions. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, s in summaries.items():
        axes[0].plot(s["ccdf"]["js"], s["ccdf"]["fraction_above"], label=name)
        if s["topk_overlap"]["mean_overlap"] is not None:
            axes[1].plot(
                s["topk_overlap"]["k"], s["topk_overlap"]["mean_overlap"], "o-", ms=3, label=name
            )
        if s["tail_promotion"]["fraction_below"] is not None:
            axes[2].plot(
                [str(t) for t in s["tail_promotion"]["thresholds"]],
                s["tail_promotion"]["fraction_below"],
                "s-",
                label=name,
            )
    axes[0].set(
        xlabel="JS(π_ft ‖ π_base) (nats)",
        ylabel="fraction of positions above",
        yscale="log",
        title="CCDF of per-position JS",
    )
    axes[1].set(
        xlabel="k",
        ylabel="mean |top-k ∩ top-k| / k",
        ylim=(0, 1.05),
        title="top-k overlap where JS > threshold",
    )
    axes[2].set(
        xlabel="base probability of the new top-1 below",
        ylabel="fraction of positions",
        ylim=(0, 1.05),
        title="tail promotion where JS > threshold",
    )
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
