"""Periodic evaluation during training: sample the held-out prompts, grade, summarise.

The same engines that generate rollouts generate the evaluation samples (with the evaluation's
own sampling settings), so an evaluation always reflects the latest synced weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlrt_megatron.algorithms.metrics import results_row
from rlrt_megatron.rollout.sampling import SamplingConfig
from rlrt_megatron.trainer.prompts import TemplatedPrompt


def evaluate(
    engines: Any, rewards: Any, prompts: Sequence[TemplatedPrompt], sampling: SamplingConfig
) -> dict[str, float]:
    """``sampling.n`` samples per prompt → accuracy (avg@n), pass@n and mean response length.

    ``engines``: anything with ``generate(prompt_ids, sampling) -> [[Sample] * n] * P`` (the
    engine pool); ``rewards``: a reward pool with ``grade(responses, ground_truths)``.
    """
    if not prompts:
        raise ValueError("evaluation needs at least one prompt")
    samples = engines.generate([p.ids for p in prompts], sampling)
    n = sampling.n
    responses = [s.text for group in samples for s in group]
    truths = [p.record.ground_truth for p in prompts for _ in range(n)]
    graded = rewards.grade(responses, truths)
    correct = np.asarray(graded.scores, dtype=float).reshape(len(prompts), n) >= 1.0
    row = results_row(correct, ks=[1, n], percent=False)
    lengths = [len(s.token_ids) for group in samples for s in group]
    return {
        "accuracy": row["avg@n"],
        f"pass@{n}": row["pass@n"],
        "response_length": float(np.mean(lengths)),
        "num_prompts": float(len(prompts)),
        "samples_per_prompt": float(n),
    }
