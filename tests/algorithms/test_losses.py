import math

import pytest
import torch

from rlrt_megatron.algorithms.losses import (
    aggregate,
    entropy_bonus,
    policy_loss,
    rollout_importance_weights,
)

# Four tokens in two rows: (A, log r) = (1, 0), (1, 0.5), (−1, −0.5), (−1, 0.2).
# Per-token DAPO loss: −1; clip-high active → −1.28; clip-low active → +0.8; inside → e^0.2.
OLD = torch.tensor([[-1.0, -1.5], [-1.0, -1.2]])
NEW = torch.tensor([[-1.0, -1.0], [-1.5, -1.0]])
ADV = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
PER_TOKEN = torch.tensor([[-1.0, -1.28], [0.8, math.exp(0.2)]])


def test_token_mean_hand_computed_and_clip_fractions():
    mask = torch.ones(2, 2)
    loss, metrics = policy_loss(NEW, OLD, ADV, mask)
    assert loss.item() == pytest.approx(PER_TOKEN.mean().item(), abs=1e-6)
    assert metrics["clipfrac_high"] == pytest.approx(0.25)
    assert metrics["clipfrac_low"] == pytest.approx(0.25)
    assert metrics["clipfrac"] == pytest.approx(0.5)
    k3 = [(math.exp(x) - 1 - x) for x in (0.0, 0.5, -0.5, 0.2)]
    assert metrics["approx_kl"] == pytest.approx(sum(k3) / 4, abs=1e-6)


def test_aggregations_differ_with_unequal_lengths():
    mask = torch.tensor([[1, 1], [1, 0]])
    token_mean, _ = policy_loss(NEW, OLD, ADV, mask)
    assert token_mean.item() == pytest.approx((-1.0 - 1.28 + 0.8) / 3, abs=1e-6)
    seq_mean, _ = policy_loss(NEW, OLD, ADV, mask, aggregation="seq-mean-token-mean")
    assert seq_mean.item() == pytest.approx(((-1.0 - 1.28) / 2 + 0.8) / 2, abs=1e-6)


def test_gradient_only_through_unclipped_tokens():
    new = NEW.clone().requires_grad_(True)
    loss, _ = policy_loss(new, OLD, ADV, torch.ones(2, 2))
    loss.backward()
    # d/dlogp (−A·r)/4 = −A·r/4 on unclipped tokens; clipped tokens get 0.
    expected = torch.tensor([[-0.25, 0.0], [0.0, math.exp(0.2) / 4]])
    torch.testing.assert_close(new.grad, expected)


def test_truncated_rollout_importance_weights():
    rollout = OLD - torch.tensor([[math.log(3.0), 0.0], [math.log(0.5), 0.0]])
    weights, metrics = rollout_importance_weights(OLD, rollout, torch.ones(2, 2), clip=2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0], [0.5, 1.0]]))
    assert metrics["rollout_is_weight_mean"] == pytest.approx(4.5 / 4)
    assert metrics["rollout_is_clipped_frac"] == pytest.approx(0.25)
    assert metrics["rollout_is_logprob_diff_mean"] == pytest.approx(math.log(6.0) / 4)
    assert metrics["rollout_is_logprob_diff_max"] == pytest.approx(math.log(3.0))
    loss, m = policy_loss(NEW, OLD, ADV, torch.ones(2, 2), rollout_logprobs=rollout)
    expected = (PER_TOKEN * torch.tensor([[2.0, 1.0], [0.5, 1.0]])).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert m["rollout_is_clipped_frac"] == pytest.approx(0.25)
    unweighted, _ = policy_loss(
        NEW, OLD, ADV, torch.ones(2, 2), rollout_logprobs=rollout, rollout_is_clip=None
    )
    assert unweighted.item() == pytest.approx(PER_TOKEN.mean().item(), abs=1e-6)


def test_the_importance_weight_is_detached():
    rollout = (OLD - 0.3).requires_grad_(True)
    old = OLD.clone().requires_grad_(True)
    new = NEW.clone().requires_grad_(True)
    loss, _ = policy_loss(new, old, ADV, torch.ones(2, 2), rollout_logprobs=rollout)
    loss.backward()
    assert rollout.grad is None and old.grad is None and new.grad is not None


def test_normalizer_makes_micro_batches_add_up_to_the_batch_mean():
    mask = torch.tensor([[1, 1], [1, 0]])
    full, _ = policy_loss(NEW, OLD, ADV, mask)
    parts = [
        policy_loss(NEW[i : i + 1], OLD[i : i + 1], ADV[i : i + 1], mask[i : i + 1], normalizer=3)[
            0
        ]
        for i in range(2)
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), abs=1e-6)


def test_large_log_ratios_stay_finite():
    loss, _ = policy_loss(
        torch.tensor([[100.0]]), torch.tensor([[-100.0]]), torch.tensor([[-1.0]]), torch.ones(1, 1)
    )
    assert math.isfinite(loss.item())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(advantages=ADV[:, :1]), "advantages has shape"),
        (dict(response_mask=torch.tensor([[1, 1], [0, 0]])), "no response tokens"),
        (dict(response_mask=torch.full((2, 2), 2)), "only 0 and 1"),
        (dict(logprobs=torch.full((2, 2), float("nan"))), "logprobs contains NaN"),
        (dict(aggregation="sum"), "aggregation must be one of"),
        (dict(clip_low=1.5), "clip_low must be < 1"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(logprobs=NEW, old_logprobs=OLD, advantages=ADV, response_mask=torch.ones(2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        policy_loss(**args)


def test_entropy_bonus_hand_computed_and_gradient_sign():
    entropy = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    term = entropy_bonus(entropy, mask, coef=0.01)
    assert term.item() == pytest.approx(-0.01 * 2.0)
    term.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.01 / 3] * 2, [-0.01 / 3, 0.0]]))
    with pytest.raises(ValueError, match="coef must be >= 0"):
        entropy_bonus(entropy, mask, coef=-1.0)


def test_aggregate_rejects_non_positive_normalizer():
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        aggregate(torch.ones(1, 2), torch.ones(1, 2), normalizer=0)
