"""The LR schedule counts RL steps (paper Table 5 "warmup steps 10", verl's convention): with 2
mini-batches per RL step the warm-up lasts 10 RL steps, not 5. Drives the real update loop
(`train_step`, through `PolicyActor.train_step`) with the optimizer step itself stubbed out, so
it needs no model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import rlrt_megatron.megatron.train_step as train_step_module
from rlrt_megatron.megatron.actor import PolicyActor
from rlrt_megatron.megatron.optimizer import AdamWConfig, build_scheduler
from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

LR = 1e-6
BATCH = TrainBatch(
    prompts=[[1, 2], [3], [4], [5, 6]],
    responses=[[7, 8], [9], [10, 11], [12]],
    old_logprobs=torch.zeros(4, 2),
    token_advantages=torch.ones(4, 2),
    pg_rows=torch.ones(4, dtype=torch.bool),
    distill_rows=torch.zeros(4, dtype=torch.bool),
)


@pytest.fixture
def stub_update(monkeypatch):
    """The optimizer step replaced by a record of the LR it would use (read as the real one
    reads it, from the optimizer's first parameter group); ``skip`` marks skipped steps."""
    from megatron.core import parallel_state

    skip: set[int] = set()
    calls = []

    def minibatch_step(model, optimizer, mini, config, teacher_swap=None):
        calls.append(len(calls))
        return {"lr": float(optimizer.param_groups[0]["lr"]), "skipped": float(calls[-1] in skip)}

    monkeypatch.setattr(train_step_module, "_minibatch_step", minibatch_step)
    monkeypatch.setattr(parallel_state, "get_data_parallel_world_size", lambda *a, **k: 1)
    return skip


def _lr_per_rl_step(config: AdamWConfig, rl_steps: int) -> list[list[float]]:
    """The LR of each mini-batch of RL steps 1..rl_steps, through PolicyActor.train_step."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    actor = SimpleNamespace(
        config=SimpleNamespace(temperature=1.0),
        teacher=SimpleNamespace(
            separate=False, rescore_per_minibatch=False, after_optimizer_step=lambda: None
        ),
        model=SimpleNamespace(vocab_size=32),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config),
    )
    update = UpdateConfig(method="grpo", mini_batches=2)
    return [
        [m["lr"] for m in PolicyActor.train_step(actor, BATCH, update)] for _ in range(rl_steps)
    ]


def test_warmup_counts_rl_steps(stub_update):
    lrs = _lr_per_rl_step(AdamWConfig(lr=LR, warmup_steps=10), rl_steps=12)
    # Hand-computed: RL step n trains both of its mini-batches at LR · min(n − 1, 10) / 10
    # (0 at step 1, as verl's constant-with-warmup schedule; the full LR from step 11).
    expected = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]
    assert lrs == [[pytest.approx(f * LR, abs=1e-15)] * 2 for f in expected]


def test_optimizer_step_unit_is_megatron_lm_counting(stub_update):
    lrs = _lr_per_rl_step(
        AdamWConfig(lr=LR, warmup_steps=10, schedule_unit="optimizer_step"), rl_steps=6
    )
    # One schedule step per mini-batch: mini-batch j (0-based over the run) at LR · min(j, 10)/10,
    # so the 10-step warm-up is over after 5 RL steps.
    expected = [[0.0, 0.1], [0.2, 0.3], [0.4, 0.5], [0.6, 0.7], [0.8, 0.9], [1.0, 1.0]]
    assert lrs == [[pytest.approx(f * LR, abs=1e-15) for f in pair] for pair in expected]


def test_linear_decay_counts_rl_steps_too(stub_update):
    config = AdamWConfig(lr=LR, warmup_steps=2, decay_style="linear", decay_steps=6)
    lrs = _lr_per_rl_step(config, rl_steps=8)
    # RL step n uses schedule step s = n − 1: warm-up s/2 for s ≤ 2, then linear from LR at s = 2
    # to 0 at s = 6: (6 − s)/4.
    expected = [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert lrs == [[pytest.approx(f * LR, abs=1e-15)] * 2 for f in expected]


def test_a_fully_skipped_update_still_advances_one_rl_step(stub_update):
    stub_update.update({2, 3})  # both mini-batches of RL step 2 skipped (non-finite gradients)
    lrs = _lr_per_rl_step(AdamWConfig(lr=LR, warmup_steps=10), rl_steps=3)
    assert lrs == [[0.0, 0.0], [pytest.approx(0.1 * LR)] * 2, [pytest.approx(0.2 * LR)] * 2]


def test_schedule_state_records_its_unit_and_refuses_the_other():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = build_scheduler(optimizer, AdamWConfig(lr=LR, warmup_steps=10))
    for _ in range(3):
        scheduler.end_update()
    state = scheduler.state_dict()
    assert state["schedule_unit"] == "rl_step" and state["num_steps"] == 3
    resumed = build_scheduler(optimizer, AdamWConfig(lr=LR, warmup_steps=10))
    resumed.load_state_dict(state)
    assert resumed.num_steps == 3 and optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * LR)
    other = build_scheduler(
        optimizer, AdamWConfig(lr=LR, warmup_steps=10, schedule_unit="optimizer_step")
    )
    with pytest.raises(ValueError, match="schedule_unit=rl_step"):
        other.load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "schedule_unit"}  # saved before the unit
    with pytest.raises(ValueError, match="counts optimizer_steps"):
        build_scheduler(optimizer, AdamWConfig(lr=LR, warmup_steps=10)).load_state_dict(legacy)
    with pytest.raises(ValueError, match="schedule_unit must be one of"):
        AdamWConfig(lr=LR, schedule_unit="epoch")
