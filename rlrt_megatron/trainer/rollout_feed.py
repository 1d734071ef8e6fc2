"""Where each RL step's rollouts come from: ``rollout.mode`` sync or one_step_off.

sync
    Step t generates its own rollouts with the weights step t−1 synced: on-policy.
one_step_off
    While step t scores its rollouts and updates, the engines already generate step t+1's rollouts
    with the weights step t started from (verl's "one-step-off policy", NeMo-RL's asynchronous
    GRPO at a trajectory age of 1). Before step t's weight sync the driver waits for that
    generation (`RolloutFeed.finish_ahead`), so a sync never overtakes a generation in flight
    and every rollout is exactly one weight version old (step 0's and a resumed run's first are
    fresh). The update then scores the rows with the current weights for π_old (no on-policy
    shortcut) and the DAPO surrogate's truncated importance correction, min(π_old/π_engine, 2)
    with the engines' own log-probs, covers the lag (`rlrt_megatron.algorithms.losses`); the
    loop logs ``rollout/staleness`` and the correction's ``update/rollout_is_*`` statistics.
    Colocated placement cannot overlap (its engines sleep during the update): refused at config
    load (`RolloutSection`).

Resume stays exact: the batch generated ahead was made with weights the checkpoint no longer
holds, so a checkpoint stores it (`state_dict`: the prompt iterator's position *before* that
batch and the batch's samples, as tensors in the JSON-safe state) and a resumed run trains on
those very samples; an uninterrupted and a resumed run see the same rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlrt_megatron.rollout.sampling import Sample, SamplingConfig
from rlrt_megatron.trainer.stack import rollout_sampling

RolloutMode = Literal["sync", "one_step_off"]

STATE_VERSION = 1


@dataclass
class GeneratedBatch:
    """A step's prompts (`TemplatedPrompt`, one per group) and their K samples each."""

    prompts: list[Any]
    samples: list[list[Sample]]


def step_sampling(config: Any, step: int, num_prompts: int) -> SamplingConfig:
    """The sampling settings of RL step ``step`` (`trainer.stack.rollout_sampling`): its seed
    depends on the step alone, so that a resumed run, or a batch generated one step ahead, draws
    exactly what an uninterrupted one draws."""
    return rollout_sampling(config, step, num_prompts)


class RolloutFeed:
    """Hands each step its `GeneratedBatch` and, in one_step_off mode, generates the next one
    while the current step updates.

    Per step the loop calls: `take` (this step's batch), `start_ahead` (dispatch the next
    step's generation; a no-op in sync mode and at the last step), then `finish_ahead` right
    before the weight sync."""

    def __init__(self, config: Any, engines: Any, batches: Any) -> None:
        self.mode: RolloutMode = config.rollout.mode
        self._config = config
        self._engines = engines
        self._batches = batches
        self._ahead: GeneratedBatch | None = None
        self._pending: tuple[list[Any], Any] | None = None
        self._data_before_ahead: dict | None = None

    @property
    def has_ahead(self) -> bool:
        return self._ahead is not None or self._pending is not None

    def take(self, step: int) -> GeneratedBatch:
        """Step ``step``'s rollouts: the batch generated ahead if there is one, else generated
        now with the engines' current weights."""
        self.finish_ahead()
        if self._ahead is not None:
            batch, self._ahead, self._data_before_ahead = self._ahead, None, None
            return batch
        prompts = next(self._batches)
        sampling = step_sampling(self._config, step, len(prompts))
        return GeneratedBatch(prompts, self._engines.generate([p.ids for p in prompts], sampling))

    def start_ahead(self, step: int) -> None:
        """one_step_off: dispatch step ``step + 1``'s generation now, with the engines' current
        weights (those step ``step`` trains from); returns at once."""
        if self.mode != "one_step_off" or self.has_ahead:
            return
        if step + 1 >= self._config.trainer.steps:
            return  # nothing would train on it
        self._data_before_ahead = self._batches.state_dict()
        prompts = next(self._batches)
        sampling = step_sampling(self._config, step + 1, len(prompts))
        self._pending = (prompts, self._engines.submit([p.ids for p in prompts], sampling))

    def finish_ahead(self) -> None:
        """Wait for the generation in flight, if any (before a weight sync or a checkpoint)."""
        if self._pending is None:
            return
        prompts, pending = self._pending
        self._pending = None
        self._ahead = GeneratedBatch(prompts, pending.result())

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs: ``data`` (the prompt iterator's position, before the batch
        generated ahead if any) and ``rollouts_ahead`` (that batch's samples, or None)."""
        self.finish_ahead()
        if self._ahead is None:
            return {"data": self._batches.state_dict(), "rollouts_ahead": None}
        return {
            "data": self._data_before_ahead,
            "rollouts_ahead": encode_samples(self._ahead.samples),
        }

    def load_state_dict(self, data: dict | None, rollouts_ahead: dict | None) -> None:
        """Restore a checkpoint's position; its batch generated ahead (if any) becomes the next
        step's rollouts, paired again with the same prompts (drawn again from the restored
        position)."""
        self._pending, self._ahead, self._data_before_ahead = None, None, None
        self._batches.load_state_dict(data)
        if rollouts_ahead is None:
            return
        self._data_before_ahead = self._batches.state_dict()
        prompts = next(self._batches)
        samples = decode_samples(rollouts_ahead)
        if len(samples) != len(prompts) or any(
            len(group) != self._config.data.rollouts_per_prompt for group in samples
        ):
            raise ValueError(
                f"the checkpoint's rollouts generated ahead hold {len(samples)} groups of "
                f"{sorted({len(g) for g in samples})} samples; this run draws {len(prompts)} "
                f"prompts x {self._config.data.rollouts_per_prompt} (data.prompts_per_step or "
                "data.rollouts_per_prompt changed since the checkpoint?)"
            )
        self._ahead = GeneratedBatch(prompts, samples)


def encode_samples(samples: list[list[Sample]]) -> dict[str, Any]:
    """A batch's samples as a few flat tensors and lists (JSON-safe through `safe_state`, no
    per-token Python objects): token ids int64 and log-probs float64 concatenated, with lengths.
    Log-probs in float64: Python floats round-trip exactly."""
    flat = [s for group in samples for s in group]
    return {
        "version": STATE_VERSION,
        "group_sizes": [len(group) for group in samples],
        "lengths": [len(s.token_ids) for s in flat],
        "token_ids": torch.tensor([t for s in flat for t in s.token_ids], dtype=torch.int64),
        "logprobs": torch.tensor([x for s in flat for x in s.logprobs], dtype=torch.float64),
        "finish_reasons": [s.finish_reason for s in flat],
        "texts": [s.text for s in flat],
        "weight_versions": [s.weight_version for s in flat],
    }


def decode_samples(state: dict[str, Any]) -> list[list[Sample]]:
    """Inverse of `encode_samples`."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"unknown rollouts_ahead state version {state.get('version')!r}")
    ids, logprobs = state["token_ids"].tolist(), state["logprobs"].tolist()
    flat, offset = [], 0
    for i, length in enumerate(state["lengths"]):
        flat.append(
            Sample(
                token_ids=ids[offset : offset + length],
                logprobs=logprobs[offset : offset + length],
                finish_reason=state["finish_reasons"][i],
                text=state["texts"][i],
                weight_version=int(state["weight_versions"][i]),
            )
        )
        offset += length
    if offset != len(ids):
        raise ValueError(f"rollouts_ahead: lengths cover {offset} tokens of {len(ids)}")
    groups, start = [], 0
    for size in state["group_sizes"]:
        groups.append(flat[start : start + size])
        start += size
    return groups
