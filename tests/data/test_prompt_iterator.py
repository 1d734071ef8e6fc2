"""The shuffled epoch iterator: coverage, determinism, and exact resume from a saved position."""

from __future__ import annotations

import json

import pytest

from rlrt_megatron.data import PromptIterator

ITEMS = list(range(10))


def _take(iterator: PromptIterator, n: int) -> list[list[int]]:
    return [next(iterator) for _ in range(n)]


def test_each_epoch_is_a_permutation_without_drop_last() -> None:
    it = PromptIterator(ITEMS, 4, seed=3, drop_last=False, num_epochs=3)
    assert it.batches_per_epoch == 3
    batches = list(it)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [sum(batches[i : i + 3], []) for i in (0, 3, 6)]
    for epoch in epochs:
        assert sorted(epoch) == ITEMS
    # Each epoch draws a fresh order.
    assert epochs[0] != epochs[1] != epochs[2]


def test_drop_last_gives_full_batches_and_stops() -> None:
    it = PromptIterator(ITEMS, 3, seed=0, num_epochs=2)
    batches = list(it)
    assert len(batches) == 2 * 3 and all(len(b) == 3 for b in batches)
    first_epoch = sum(batches[:3], [])
    assert len(set(first_epoch)) == 9  # no repeats inside an epoch; one item dropped
    with pytest.raises(StopIteration):
        next(it)


def test_determinism_and_seed_sensitivity() -> None:
    a = _take(PromptIterator(ITEMS, 3, seed=7), 8)
    b = _take(PromptIterator(ITEMS, 3, seed=7), 8)
    c = _take(PromptIterator(ITEMS, 3, seed=8), 8)
    assert a == b and a != c
    unshuffled = _take(PromptIterator(ITEMS, 5, seed=7, shuffle=False), 3)
    assert unshuffled == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("saved_after", [0, 2, 3, 4, 7])
def test_resume_mid_epoch_gives_the_same_next_batches(saved_after: int) -> None:
    reference = PromptIterator(ITEMS, 3, seed=11)
    _take(reference, saved_after)
    state = json.loads(json.dumps(reference.state_dict()))  # survives a JSON checkpoint
    expected = _take(reference, 6)  # crosses at least one epoch boundary

    restored = PromptIterator(ITEMS, 3, seed=11)
    restored.load_state_dict(state)
    assert _take(restored, 6) == expected
    assert restored.state_dict() == reference.state_dict()


def test_state_mismatch_and_argument_errors() -> None:
    state = PromptIterator(ITEMS, 3, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 but this iterator has seed=2"):
        PromptIterator(ITEMS, 3, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_items=10 but this iterator has num_items=9"):
        PromptIterator(ITEMS[:9], 3, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"missing keys \['epoch'\]"):
        PromptIterator(ITEMS, 3, seed=1).load_state_dict(
            {k: v for k, v in state.items() if k != "epoch"}
        )
    with pytest.raises(ValueError, match="is invalid"):
        PromptIterator(ITEMS, 3, seed=1).load_state_dict({**state, "batch_in_epoch": 99})
    with pytest.raises(ValueError, match="exceeds the dataset size"):
        PromptIterator(ITEMS, 11, seed=0)
    with pytest.raises(ValueError, match="empty dataset"):
        PromptIterator([], 1, seed=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        PromptIterator(ITEMS, 0, seed=0)
