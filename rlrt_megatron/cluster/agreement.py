"""Trainer/engine agreement: do the engines sample from the policy the trainer is optimizing?

For each sampled response token, the engine reported log μ(y_t) (its sampled-token log-prob) and
the trainer's forward-only pass computed log π_old(y_t) for the same token with the same weights
version. With equal weights, equal temperature and no top-k/top-p the two differ only by kernel
numerics (float32: ~1e-6–1e-5; bfloat16: ~1e-2). A larger gap means a broken weight sync, a
temperature or template mismatch, or stale weights, and it biases the importance ratio
exp(logp_old − logp_rollout) that the truncated IS correction caps. These are the per-step
metrics the trainer logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogprobAgreement:
    """|Δ| = |engine log-prob − trainer log-prob| over the response tokens of a batch."""

    mean_abs_diff: float
    max_abs_diff: float
    num_tokens: int

    def metrics(self, prefix: str = "rollout/") -> dict[str, float]:
        return {
            f"{prefix}logprob_diff_mean": self.mean_abs_diff,
            f"{prefix}logprob_diff_max": self.max_abs_diff,
            f"{prefix}logprob_diff_tokens": float(self.num_tokens),
        }


def padded_logprobs(rows: Sequence[Sequence[float]], width: int | None = None) -> torch.Tensor:
    """Per-response log-prob lists (e.g. ``Sample.logprobs``) as a right-padded float32 [B, T]
    tensor (T = ``width`` or the longest row; padding is 0)."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} log-probs, more than width {width}")
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.float32)
    return out


def logprob_agreement(
    engine_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor, response_mask: torch.Tensor
) -> LogprobAgreement:
    """Mean and max |engine − trainer| over the tokens where ``response_mask`` is true.

    Shapes: all three [B, T] (the mask bool, true on response tokens). Both log-prob tensors must
    be finite on the masked tokens; padding positions are ignored whatever they hold.
    """
    if engine_logprobs.shape != trainer_logprobs.shape or engine_logprobs.shape != (
        response_mask.shape
    ):
        raise ValueError(
            f"shape mismatch: engine {tuple(engine_logprobs.shape)}, trainer"
            f" {tuple(trainer_logprobs.shape)}, mask {tuple(response_mask.shape)}"
        )
    if response_mask.dtype != torch.bool:
        raise ValueError(f"response_mask must be bool, got {response_mask.dtype}")
    engine = engine_logprobs.double()[response_mask]
    trainer = trainer_logprobs.double()[response_mask]
    if engine.numel() == 0:
        raise ValueError("response_mask selects no tokens")
    for name, values in (("engine", engine), ("trainer", trainer)):
        if not torch.isfinite(values).all():
            raise ValueError(f"{name} log-probs are not finite on response tokens")
    diff = (engine - trainer).abs()
    return LogprobAgreement(
        mean_abs_diff=float(diff.mean()),
        max_abs_diff=float(diff.max()),
        num_tokens=int(diff.numel()),
    )
