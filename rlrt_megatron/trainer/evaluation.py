"""Periodic evaluation during training: sample the held-out prompts, grade, summarise.

The same engines that generate rollouts generate the evaluation samples (with the evaluation's
own sampling settings), so an evaluation always reflects the latest synced weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlrt_megatron.algorithms.metrics import default_ks, results_row
from rlrt_megatron.data.prompts import TemplatedPrompt
from rlrt_megatron.rollout.sampling import SamplingConfig


def evaluate(
    engines: Any, rewards: Any, prompts: Sequence[TemplatedPrompt], sampling: SamplingConfig
) -> dict[str, float]:
    """``sampling.n`` samples per prompt → accuracy (avg@n), pass@k for k = 1, 2, 4, …, n (the
    unbiased estimator; the paper's pass@k curves, Figure 8) and mean response length.

    ``engines``: anything with ``generate(prompt_ids, sampling) -> [[Sample] * n] * P`` (the
    engine pool); ``rewards``: a reward pool with ``grade(responses, ground_truths)``.
    """
    return evaluate_per_prompt(engines, rewards, prompts, sampling)[0]


def evaluate_per_prompt(
    engines: Any, rewards: Any, prompts: Sequence[TemplatedPrompt], sampling: SamplingConfig
) -> tuple[dict[str, float], np.ndarray]:
    """Like :func:`evaluate`, plus each prompt's accuracy over its n samples, shape [P] (what a
    paired before/after comparison needs: :func:`paired_difference`)."""
    if not prompts:
        raise ValueError("evaluation needs at least one prompt")
    samples = engines.generate([p.ids for p in prompts], sampling)
    n = sampling.n
    responses = [s.text for group in samples for s in group]
    truths = [p.record.ground_truth for p in prompts for _ in range(n)]
    graded = rewards.grade(responses, truths)
    correct = np.asarray(graded.scores, dtype=float).reshape(len(prompts), n) >= 1.0
    row = results_row(correct, ks=default_ks(n), percent=False)
    lengths = [len(s.token_ids) for group in samples for s in group]
    metrics = {
        "accuracy": row["avg@n"],
        **{f"pass@{k}": value for k, value in row["pass@k"].items()},
        "response_length": float(np.mean(lengths)),
        "num_prompts": float(len(prompts)),
        "samples_per_prompt": float(n),
    }
    return metrics, correct.mean(axis=1)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """Accuracy change on the same prompts: mean of ``after - before`` per prompt, its standard
    error ``std(d, ddof=1) / sqrt(P)`` and ``z = delta / se``.

    Pairing removes the between-prompt variance (easy vs hard problems) that an unpaired
    comparison of two accuracies would count as noise; what remains is the sampling noise of the
    n samples per prompt plus the real per-prompt change. ``z`` is inf when every prompt moved
    by the same amount (se = 0) and delta ≠ 0, and 0 when nothing moved.
    """
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if b.shape != a.shape or b.ndim != 1 or len(b) < 2:
        raise ValueError(
            f"paired_difference needs two equal-length lists of >= 2 prompts, got "
            f"{b.shape} and {a.shape}"
        )
    d = a - b
    delta = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    z = delta / se if se > 0 else (0.0 if delta == 0 else float("inf") * np.sign(delta))
    return {"delta": delta, "se": se, "z": float(z)}
