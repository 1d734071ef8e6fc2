"""vLLM's temperature / top-k / top-p processing and the per-prompt-seeded inverse-CDF sampler."""

from __future__ import annotations

import math

import pytest
import torch

from rlrt_megatron.rollout.token_sampler import processed_logits, sample_rows

INF = float("-inf")


def test_temperature_divides_and_nothing_is_masked_without_top_k_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    torch.testing.assert_close(processed_logits(logits, 0.5, 0, 1.0), logits / 0.5)


def test_top_k_keeps_ties_at_the_kth_value():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0, 2.0]])
    out = processed_logits(logits, 1.0, 3, 1.0)
    # The 3rd largest value is 1.0, held by two tokens: vLLM keeps both (mask is "< kth").
    assert out.tolist() == [[3.0, 1.0, 1.0, INF, 2.0]]


def test_top_p_keeps_the_smallest_head_reaching_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = processed_logits(probs.log(), 1.0, 0, 0.8)
    # Ascending cumulative: 0.05, 0.20, 0.50, 1.0; dropped where <= 1 - 0.8 = 0.2 → the 0.05
    # and 0.15 tokens go, 0.5 + 0.3 remain (their renormalised probabilities 0.625 / 0.375).
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    torch.testing.assert_close(out.softmax(-1)[0, :2], torch.tensor([0.625, 0.375]))


def test_top_p_never_drops_the_most_likely_token():
    out = processed_logits(torch.tensor([[5.0, 0.0, 0.0]]), 1.0, 0, 1e-6)
    assert out[0, 0] == 5.0 and torch.isinf(out[0, 1:]).all()


def test_top_k_then_top_p_on_the_remaining_mass():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    out = processed_logits(logits, 1.0, 3, 0.5)
    kept = torch.softmax(torch.tensor([4.0, 3.0, 2.0]), 0)
    assert kept[0] > 0.5  # so top-p keeps only the first of the three
    assert torch.isfinite(out[0, 0]) and torch.isinf(out[0, 1:]).all()


def test_sampled_frequencies_follow_the_probabilities():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3]).expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    tokens = sample_rows(probs, torch.zeros(20000, dtype=torch.long), [g])
    counts = torch.bincount(tokens, minlength=4).double() / 20000
    assert counts[1] == 0  # a zero-probability token is never drawn
    for p, c in zip([0.1, 0.6, 0.3], counts[[0, 2, 3]].tolist(), strict=True):
        assert abs(c - p) < 4 * math.sqrt(p * (1 - p) / 20000)


def test_unnormalised_rows_sample_within_their_support():
    probs = torch.tensor([[0.0, 0.0, 0.999]]).expand(100, 3)  # float32 rounding: sums below 1
    tokens = sample_rows(probs, torch.zeros(100, dtype=torch.long), [None])
    assert (tokens == 2).all()


def test_a_prompts_rows_do_not_depend_on_the_other_prompts_in_the_batch():
    probs = torch.softmax(torch.randn(6, 50, generator=torch.Generator().manual_seed(3)), -1)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = sample_rows(probs, torch.tensor([0, 0, 0, 1, 1, 1]), gens([10, 11]))
    alone = sample_rows(probs[3:], torch.tensor([0, 0, 0]), gens([11]))
    assert together[3:].tolist() == alone.tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_same_seed_same_draws(seed):
    probs = torch.softmax(torch.randn(4, 30), -1)
    rows = torch.tensor([0, 0, 1, 1])
    a = sample_rows(probs, rows, [torch.Generator().manual_seed(seed + i) for i in range(2)])
    b = sample_rows(probs, rows, [torch.Generator().manual_seed(seed + i) for i in range(2)])
    assert a.tolist() == b.tolist()
