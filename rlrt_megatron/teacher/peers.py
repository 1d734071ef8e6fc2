"""Choosing the privileged context of the teacher view: a correct *peer* rollout."""

from __future__ import annotations

import torch


def select_peers(correct: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For every rollout, a *different* correct rollout of its group to show the teacher.

    Shapes: ``correct`` [G, K] bool → [G, K] long: the index k' ≠ k (within the group) of a
    correct rollout, drawn uniformly among the eligible ones, or −1 when the group has no other
    correct rollout. Reproducible with ``generator``.

    Never the rollout itself: a teacher that sees the very response it scores just copies it, every
    D_t collapses to ≪ 0 and every weight clips to 1 − ε_w (shared/DESIGN.md §1).
    """
    if not isinstance(correct, torch.Tensor) or correct.dim() != 2:
        raise ValueError(
            f"correct must be a [G, K] tensor, got {getattr(correct, 'shape', correct)}"
        )
    if correct.dtype != torch.bool:
        raise ValueError(f"correct must be a bool tensor, got dtype {correct.dtype}")
    groups, k = correct.shape
    eligible = correct.unsqueeze(1).expand(groups, k, k).clone()  # [g, self, peer]
    eligible &= ~torch.eye(k, dtype=torch.bool, device=correct.device)
    # A uniform random score per (row, candidate); the argmax over eligible candidates is a uniform
    # draw among them (ties have probability zero).
    scores = torch.rand((groups, k, k), generator=generator, device=correct.device)
    scores = scores.masked_fill(~eligible, -1.0)
    peers = scores.argmax(dim=-1)
    return torch.where(eligible.any(dim=-1), peers, torch.full_like(peers, -1))
