"""Evaluation statistics: the unbiased pass@k estimator and avg@k tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021).

        pass@k = 1 − C(n−c, k) / C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)

    The product form never forms a binomial coefficient, so it is exact to float precision for
    n in the thousands (C(1024, 512) alone would overflow a float). Requires 0 ≤ c ≤ n, 1 ≤ k ≤ n.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value}")
    n, c, k = int(n), int(c), int(k)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _correct_matrix(correct: Sequence[Sequence[bool]] | np.ndarray) -> np.ndarray:
    matrix = np.asarray(correct, dtype=bool)
    if matrix.ndim != 2 or matrix.shape[1] < 1:
        raise ValueError(f"correct must be [problems, n] with n >= 1, got shape {matrix.shape}")
    return matrix


def avg_at_k(correct: Sequence[Sequence[bool]] | np.ndarray) -> float:
    """avg@n: mean accuracy over all samples of all problems; ``correct`` [P, n] → [0, 1]."""
    return float(_correct_matrix(correct).mean())


def mean_pass_at_k(correct: Sequence[Sequence[bool]] | np.ndarray, k: int) -> float:
    """pass@k averaged over problems; ``correct`` [P, n] bools → [0, 1]."""
    matrix = _correct_matrix(correct)
    n = matrix.shape[1]
    return float(np.mean([pass_at_k(n, int(c), k) for c in matrix.sum(axis=1)]))


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, … up to n (n itself included): the paper's pass@k curve abscissae."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def results_row(
    correct: Sequence[Sequence[bool]] | np.ndarray,
    ks: Iterable[int] | None = None,
    percent: bool = True,
) -> dict:
    """One benchmark's row of a results table from its [P, n] correctness matrix.

    Returns ``{"n": n, "avg@n": ..., "pass@n": ..., "pass@k": {k: ...}}`` (the keys are literally
    "avg@n" and "pass@n"; "n" holds the sample count), in percent (as the paper's tables) unless
    ``percent=False``.
    """
    matrix = _correct_matrix(correct)
    n = matrix.shape[1]
    scale = 100.0 if percent else 1.0
    ks = default_ks(n) if ks is None else sorted(set(int(k) for k in ks))
    return {
        "n": n,
        "avg@n": scale * avg_at_k(matrix),
        "pass@n": scale * mean_pass_at_k(matrix, n),
        "pass@k": {k: scale * mean_pass_at_k(matrix, k) for k in ks},
    }
