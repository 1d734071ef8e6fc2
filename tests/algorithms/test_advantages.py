import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrt_megatron.algorithms.advantages import group_advantages


def test_hand_computed_centered_and_normalized():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    centered = group_advantages(rewards, normalize_by_std=False)
    torch.testing.assert_close(
        centered,
        torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [-0.25, -0.25, -0.25, 0.75]]),
    )
    # Sample std: group 0 has var = 4·0.25/3 = 1/3, group 2 var = 0.75/3 = 0.25 (std 0.5).
    normalized = group_advantages(rewards, normalize_by_std=True, eps=0.0)
    s = 0.5 / (1.0 / 3.0) ** 0.5
    torch.testing.assert_close(
        normalized,
        torch.tensor([[s, -s, -s, s], [0.0, 0.0, 0.0, 0.0], [-0.5, -0.5, -0.5, 1.5]]),
    )


def test_eps_enters_the_denominator():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    out = group_advantages(rewards, normalize_by_std=True, eps=0.5)
    torch.testing.assert_close(out, torch.tensor([[-0.25, -0.25, -0.25, 0.75]]))


def test_single_rollout_groups_are_zero_not_nan():
    out = group_advantages(torch.tensor([[1.0], [0.0]]), normalize_by_std=True)
    assert torch.equal(out, torch.zeros(2, 1))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(4), "rewards must have 2 dims"),
        (torch.tensor([[0.0, float("nan")]]), "rewards contains NaN"),
        (torch.tensor([[0.0, float("inf")]]), "rewards contains inf"),
    ],
)
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(bad, normalize_by_std=False)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.integers(1, 5),
    k=st.integers(2, 8),
    value=st.sampled_from([0.0, 1.0]),
    normalize=st.booleans(),
)
def test_all_correct_or_all_wrong_groups_give_zero(groups, k, value, normalize):
    rewards = torch.full((groups, k), value)
    assert torch.equal(
        group_advantages(rewards, normalize_by_std=normalize), torch.zeros(groups, k)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=4, max_size=4), min_size=1, max_size=6)
)
def test_advantages_sum_to_zero_per_group(rows):
    rewards = torch.tensor(rows, dtype=torch.float64)
    for normalize in (False, True):
        sums = group_advantages(rewards, normalize_by_std=normalize).sum(dim=-1)
        torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-9, rtol=0)
