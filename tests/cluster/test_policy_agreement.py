"""The trainer/engine agreement metric on hand-computed inputs (no Ray, no engine)."""

from __future__ import annotations

import math

import pytest
import torch

from rlrt_megatron.cluster.agreement import logprob_agreement, padded_logprobs


def test_padding_is_ignored_and_values_are_exact():
    engine = padded_logprobs([[-1.0, -2.0, -0.5], [-3.0]])
    assert engine.shape == (2, 3) and engine[1, 1:].eq(0).all()
    trainer = torch.tensor([[-1.25, -2.0, -0.25], [-2.0, 99.0, math.nan]])  # junk in the padding
    mask = torch.tensor([[True, True, True], [True, False, False]])
    agree = logprob_agreement(engine, trainer, mask)
    # |Δ| = 0.25, 0, 0.25, 1.0 over 4 tokens
    assert agree.num_tokens == 4
    assert agree.mean_abs_diff == pytest.approx(1.5 / 4)
    assert agree.max_abs_diff == pytest.approx(1.0)
    assert agree.metrics() == {
        "rollout/logprob_diff_mean": pytest.approx(0.375),
        "rollout/logprob_diff_max": pytest.approx(1.0),
        "rollout/logprob_diff_tokens": 4.0,
    }


def test_padded_logprobs_to_a_given_width():
    assert padded_logprobs([[-1.0]], width=4).tolist() == [[-1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="row 0 has 2 log-probs, more than width 1"):
        padded_logprobs([[-1.0, -2.0]], width=1)


def test_bad_inputs_are_named():
    x = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape mismatch"):
        logprob_agreement(x, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="must be bool"):
        logprob_agreement(x, x, mask.float())
    with pytest.raises(ValueError, match="selects no tokens"):
        logprob_agreement(x, x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="trainer log-probs are not finite"):
        logprob_agreement(x, torch.full((2, 3), -math.inf), mask)
