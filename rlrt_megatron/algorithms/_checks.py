"""Input validation shared by the algorithm functions.

Every check raises ``ValueError`` naming the offending argument: the math here is called from
user loops as well as from the trainer, and silent broadcasting of a ``[B]`` tensor against a
``[B, T]`` one is the classic way an RL loss goes quietly wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(name: str, x: object, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    return x


def check_shape(name: str, x: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def check_finite(name: str, x: torch.Tensor, where: torch.Tensor | None = None) -> None:
    """Raise if ``x`` holds NaN or ±inf (only at positions where ``where`` is true, if given)."""
    values = x if where is None else x[where.bool()]
    if values.is_floating_point() and not torch.isfinite(values).all():
        bad = "NaN" if torch.isnan(values).any() else "inf"
        raise ValueError(f"{name} contains {bad}")


def check_bool(name: str, x: torch.Tensor) -> None:
    if x.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {x.dtype}")


def check_mask(name: str, mask: torch.Tensor, *, require_tokens_per_row: bool = True) -> None:
    """A response mask is 0/1 (bool or numeric); each row must hold at least one token."""
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    if require_tokens_per_row and mask.dim() == 2 and mask.shape[0] > 0:
        empty = (mask.sum(dim=-1) == 0).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"{name} has rows with no response tokens: {empty[:8].tolist()}"
                + (" ..." if empty.numel() > 8 else "")
            )


def check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_non_negative(name: str, value: float) -> None:
    if not float(value) >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
