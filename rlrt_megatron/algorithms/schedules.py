"""Schedules for the reweighting strength λ (and any other scalar hyperparameter)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class LinearSchedule:
    """A scalar that warms up, holds, and decays linearly; ``value(step)`` for step = 0, 1, ...

        step < W:              init · step / W                         (optional warm-up from 0)
        W ≤ step < W + D:      init + (final − init) · (step − W) / D  (linear decay)
        step ≥ W + D:          final
        D = None (no decay):   init after the warm-up

    The paper's λ: init 0.5; RLRT on base models keeps it constant (``decay_steps=None``), on
    instruct/thinking models decays it to 0 over 30 steps; RLSD over 50 steps. With
    ``decay_steps=30`` the value reaches 0 at step 30 and stays there.
    """

    init: float
    final: float = 0.0
    decay_steps: int | None = None
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1 or None, got {self.decay_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def value(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.init * step / self.warmup_steps
        if self.decay_steps is None:
            return self.init
        progress = min(1.0, (step - self.warmup_steps) / self.decay_steps)
        return self.init + (self.final - self.init) * progress


def lambda_schedule(
    lam_init: float, decay_steps: int | None = None, warmup_steps: int = 0
) -> LinearSchedule:
    """The λ schedule: λ_init ∈ [0, 1], decayed linearly to 0 over ``decay_steps`` (None: kept)."""
    if not 0.0 <= lam_init <= 1.0:
        raise ValueError(f"lam_init must be in [0, 1], got {lam_init}")
    return LinearSchedule(
        init=lam_init, final=0.0, decay_steps=decay_steps, warmup_steps=warmup_steps
    )
