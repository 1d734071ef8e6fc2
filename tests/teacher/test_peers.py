from collections import Counter

import pytest
import torch

from rlrt_megatron.teacher import select_peers

CORRECT = torch.tensor(
    [[True, False, True, True], [True, False, False, False], [False, False, False, False]]
)


def test_peers_are_different_correct_rollouts_or_minus_one():
    peers = select_peers(CORRECT, generator=torch.Generator().manual_seed(0))
    assert peers.dtype == torch.long and peers.shape == (3, 4)
    assert peers[0, 0].item() in (2, 3)
    assert peers[0, 1].item() in (0, 2, 3)
    assert peers[0, 2].item() in (0, 3)
    assert peers[0, 3].item() in (0, 2)
    # Group 1: the only correct rollout has no *other* correct peer; the others all get it.
    assert peers[1].tolist() == [-1, 0, 0, 0]
    assert peers[2].tolist() == [-1, -1, -1, -1]


def test_reproducible_with_a_generator():
    a = select_peers(CORRECT, generator=torch.Generator().manual_seed(7))
    b = select_peers(CORRECT, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_uniform_among_eligible_peers():
    generator = torch.Generator().manual_seed(1)
    counts = Counter(select_peers(CORRECT, generator=generator)[0, 1].item() for _ in range(3000))
    assert set(counts) == {0, 2, 3}
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts.values())


def test_never_self_on_random_inputs():
    generator = torch.Generator().manual_seed(2)
    for _ in range(50):
        correct = torch.rand(5, 6, generator=generator) < 0.5
        peers = select_peers(correct, generator=generator)
        for g in range(5):
            for k in range(6):
                p = peers[g, k].item()
                others = [j for j in range(6) if j != k and correct[g, j]]
                assert (p == -1) == (not others)
                assert p == -1 or (p != k and correct[g, p])


def test_bad_input():
    with pytest.raises(ValueError, match="bool"):
        select_peers(CORRECT.float())
    with pytest.raises(ValueError, match=r"\[G, K\]"):
        select_peers(CORRECT[0])
