import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrt_megatron.algorithms.distillation import (
    generalized_js,
    sdpo_distillation_loss,
    srpo_token_weights,
    tail_from_topk,
    topk_with_tail,
)


def test_js_hand_computed_two_buckets():
    # P_S = (0.5, 0.5), P_T = (0.9, 0.1) → M = (0.7, 0.3);
    # KL(S‖M) = 0.5·ln(5/7) + 0.5·ln(5/3) = 0.0871767
    # KL(T‖M) = 0.9·ln(9/7) + 0.1·ln(1/3) = 0.1163218
    s = torch.tensor([0.5, 0.5]).log()
    t = torch.tensor([0.9, 0.1]).log()
    assert generalized_js(s, t, 0.5).item() == pytest.approx(0.1017492, abs=1e-6)
    assert generalized_js(s, t, 0.0).item() == pytest.approx(
        0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-6
    )
    assert generalized_js(s, t, 1.0).item() == pytest.approx(
        0.5 * math.log(5 / 9) + 0.5 * math.log(5.0), abs=1e-6
    )


def test_sdpo_loss_k1_plus_tail_hand_computed():
    student_topk = torch.tensor([[[math.log(0.5)]]])
    teacher_topk = torch.tensor([[[math.log(0.9)]]])
    loss, metrics = sdpo_distillation_loss(
        student_topk,
        teacher_topk,
        torch.ones(1, 1),
        student_tail_logprob=torch.tensor([[math.log(0.5)]]),
        teacher_tail_logprob=torch.tensor([[math.log(0.1)]]),
    )
    assert loss.item() == pytest.approx(0.1017492, abs=1e-6)
    # Tails derived from the top-k give the same value here.
    derived, _ = sdpo_distillation_loss(student_topk, teacher_topk, torch.ones(1, 1))
    assert derived.item() == pytest.approx(0.1017492, abs=1e-6)
    assert metrics["distill_tokens"] == 1


def _full_js(s, t, alpha=0.5):
    p, q = s.exp(), t.exp()
    m = (1 - alpha) * p + alpha * q
    return (1 - alpha) * (p * (p.log() - m.log())).sum(-1) + alpha * (q * (q.log() - m.log())).sum(
        -1
    )


@settings(max_examples=40, deadline=None)
@given(v=st.integers(2, 12), seed=st.integers(0, 10_000), alpha=st.sampled_from([0.25, 0.5, 0.75]))
def test_topk_js_with_k_equal_v_is_the_full_js(v, seed, alpha):
    g = torch.Generator().manual_seed(seed)
    s = torch.log_softmax(3 * torch.randn(2, 3, v, generator=g, dtype=torch.float64), -1)
    t = torch.log_softmax(3 * torch.randn(2, 3, v, generator=g, dtype=torch.float64), -1)
    _, s_top, s_tail, t_top, t_tail = topk_with_tail(s, t, k=v)
    loss, _ = sdpo_distillation_loss(
        s_top,
        t_top,
        torch.ones(2, 3),
        student_tail_logprob=s_tail,
        teacher_tail_logprob=t_tail,
        alpha=alpha,
        aggregation="token-mean",
    )
    torch.testing.assert_close(loss, _full_js(s, t, alpha).mean(), rtol=1e-9, atol=1e-12)


def test_topk_tail_is_exact_logsumexp_of_the_rest():
    s = torch.log_softmax(torch.tensor([[4.0, 3.0, 0.0, -1.0]]), -1)
    t = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), -1)
    ids, s_top, s_tail, t_top, t_tail = topk_with_tail(s, t, k=2)
    assert ids.tolist() == [[0, 1]]
    torch.testing.assert_close(s_tail, torch.logsumexp(s[:, 2:], -1))
    torch.testing.assert_close(t_top, t[:, :2])
    torch.testing.assert_close(t_tail, torch.logsumexp(t[:, 2:], -1))
    torch.testing.assert_close(tail_from_topk(s_top), s_tail)
    with pytest.raises(ValueError, match="k must be in"):
        topk_with_tail(s, t, k=5)


def test_gradient_flows_to_student_only_and_vanishes_at_equality():
    s = torch.log_softmax(torch.randn(1, 2, 6, dtype=torch.float64), -1)
    _, s_top, s_tail, t_top, t_tail = topk_with_tail(s, s.clone(), k=3)
    s_top = s_top.clone().requires_grad_(True)
    t_top = t_top.clone().requires_grad_(True)
    loss, _ = sdpo_distillation_loss(
        s_top, t_top, torch.ones(1, 2), student_tail_logprob=s_tail, teacher_tail_logprob=t_tail
    )
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert t_top.grad is None
    torch.testing.assert_close(s_top.grad, torch.zeros_like(s_top))


def test_off_policy_ratio_and_token_weights_scale_the_loss():
    s_top = torch.tensor([[[math.log(0.5)], [math.log(0.5)]]])
    t_top = torch.tensor([[[math.log(0.9)], [math.log(0.9)]]])
    base = 0.1017492
    loss, _ = sdpo_distillation_loss(
        s_top,
        t_top,
        torch.ones(1, 2),
        logprobs=torch.tensor([[0.0, 0.0]]),
        old_logprobs=torch.tensor([[-math.log(3.0), -math.log(1.5)]]),
        is_clip=2.0,
        token_weights=torch.tensor([[1.0, 0.5]]),
    )
    # ratios (3 → clipped 2, 1.5) and token weights (1, 0.5): (2·1 + 1.5·0.5)/2 · JS
    assert loss.item() == pytest.approx(base * (2.0 + 0.75) / 2, abs=1e-6)


def test_srpo_weights_hand_computed():
    entropy = torch.tensor([[0.0, math.log(2.0)], [math.log(4.0), 9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    w = srpo_token_weights(entropy, mask, beta=1.0)
    # w̃ = (1, 1/2, 1/4), mean 7/12 → (12/7, 6/7, 3/7); masked → 0.
    torch.testing.assert_close(w, torch.tensor([[12 / 7, 6 / 7], [3 / 7, 0.0]]))
    assert torch.equal(srpo_token_weights(entropy, mask, beta=0.0), mask.float())
    assert torch.equal(srpo_token_weights(entropy, torch.zeros(2, 2), beta=1.0), torch.zeros(2, 2))
    big = srpo_token_weights(torch.tensor([[1000.0, 1010.0]]), torch.ones(1, 2), beta=1.0)
    assert torch.isfinite(big).all() and big.mean().item() == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="teacher_topk_logprobs has shape"):
        sdpo_distillation_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="alpha must be in"):
        generalized_js(torch.zeros(2), torch.zeros(2), alpha=1.5)
    with pytest.raises(ValueError, match="old_logprobs is required"):
        sdpo_distillation_loss(
            torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.ones(1, 1), logprobs=torch.zeros(1, 1)
        )
    with pytest.raises(ValueError, match="beta must be >= 0"):
        srpo_token_weights(torch.zeros(1, 1), torch.ones(1, 1), beta=-1.0)
