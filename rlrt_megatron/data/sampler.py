"""A deterministic, resumable iterator over shuffled epochs of prompts.

Epoch ``e`` visits the records in the permutation drawn from ``numpy.random.default_rng([seed,
e])``: it depends only on the seed and the epoch, never on how far an earlier run got, so a run
restored from `PromptIterator.state_dict` continues with exactly the batches an uninterrupted run
would have produced. The state is a small dict of ints that the trainer stores in its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")
_STATE_KEYS = ("epoch", "batch_in_epoch", "seed", "num_items", "batch_size")


class PromptIterator(Generic[T]):
    """Batches of ``batch_size`` items, epoch after epoch, each epoch in a fresh seeded order.

    ``drop_last`` drops an epoch's final short batch (so every step sees a full batch, as verl
    does); otherwise that batch is yielded short. ``num_epochs=None`` iterates forever.
    """

    def __init__(
        self,
        items: Sequence[T],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        num_epochs: int | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(items) == 0:
            raise ValueError("cannot iterate over an empty dataset")
        if drop_last and batch_size > len(items):
            raise ValueError(
                f"batch_size {batch_size} exceeds the dataset size {len(items)} with drop_last: "
                "no batch would ever be produced"
            )
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
        self.items = items
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_epochs = num_epochs
        self.epoch = 0
        self.batch_in_epoch = 0
        self._order: np.ndarray | None = None  # the current epoch's permutation, built lazily

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(len(self.items), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Shape [num_items] int64: the order in which ``epoch`` visits the items."""
        if not self.shuffle:
            return np.arange(len(self.items))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.items))

    def __iter__(self) -> Iterator[list[T]]:
        return self

    def __next__(self) -> list[T]:
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._order = None
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        if self._order is None:
            self._order = self.epoch_order(self.epoch)
        start = self.batch_in_epoch * self.batch_size
        picked = self._order[start : start + self.batch_size]
        self.batch_in_epoch += 1
        return [self.items[int(i)] for i in picked]

    def state_dict(self) -> dict[str, int]:
        """The position as plain ints: the next batch is batch ``batch_in_epoch`` of ``epoch``."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "num_items": len(self.items),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; the dataset, seed and batch size must be the same."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"iterator state is missing keys {missing}")
        for key, mine in (
            ("seed", self.seed),
            ("num_items", len(self.items)),
            ("batch_size", self.batch_size),
        ):
            if int(state[key]) != mine:
                raise ValueError(
                    f"iterator state has {key}={state[key]} but this iterator has {key}={mine}: "
                    "the saved position would point at different prompts"
                )
        epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
        if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"iterator state position epoch={epoch}, batch={batch} is invalid")
        self.epoch, self.batch_in_epoch = epoch, batch
        self._order = None
