"""Group-relative (GRPO) advantages."""

from __future__ import annotations

import torch

from rlrt_megatron.algorithms._checks import check_finite, check_non_negative, check_tensor


def group_advantages(
    rewards: torch.Tensor, normalize_by_std: bool, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's group-relative advantage of every rollout.

    Shapes: ``rewards`` [G, K] (G prompts × K rollouts each) → [G, K].

        A_{g,k} = r_{g,k} − mean_k(r_{g,·})                      (Dr. GRPO / DAPO style)
        A_{g,k} = (r_{g,k} − mean_k(r_{g,·})) / (std_k(r_{g,·}) + eps)   if normalize_by_std

    ``std`` is the sample (unbiased, K−1) standard deviation, as verl and TRL compute it. A group
    whose rewards are all equal gets A = 0 everywhere (it carries no learning signal); a group of
    one rollout (K = 1) has no spread either and also gets 0 rather than NaN. The paper disables
    std-normalization for GRPO/SRPO and enables it for RLSD/RLRT (the method registry holds the
    defaults).
    """
    check_tensor("rewards", rewards, ndim=2)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    check_finite("rewards", rewards)
    check_non_negative("eps", eps)
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    if not normalize_by_std:
        return centered
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    std = rewards.std(dim=-1, keepdim=True, correction=1)
    # An all-equal group has std 0: its advantage is 0 even with eps=0 (never 0/0 = NaN).
    return torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered))
