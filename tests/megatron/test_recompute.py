"""Activation recomputation (`ActorConfig.recompute`) changes memory, not numbers.

Two gloo ranks (TP=2) run the same RLRT update with recompute none / selective / full (blocks of
one and of two layers); the updated parameters and the step's metrics must agree. Recomputation
replays the same forward, so the only differences allowed are reduction-order noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _dist import run_distributed

pytestmark = pytest.mark.distributed

MODES = [("none", 1), ("selective", 1), ("full", 1), ("full", 2)]


def _worker(rank: int, out_dir: str, hf_path: str) -> None:
    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import ParallelConfig, destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    out = Path(out_dir)
    batch = torch.load(out / "batch.pt")
    for mode, layers in MODES:
        actor = PolicyActor(
            ActorConfig(
                hf_path=hf_path,
                parallel=ParallelConfig(tensor_parallel=2),
                optimizer=AdamWConfig(lr=1e-2, eps=1e-3, clip_grad=1.0),
                dtype=torch.float32,
                recompute=mode,
                recompute_num_layers=layers,
            )
        )
        recomputing = actor.model.config.recompute_granularity
        metrics = actor.train_step(
            TrainBatch(**batch), UpdateConfig(method="rlrt", mini_batches=1, max_tokens=64)
        )
        params = {name: t.clone() for name, t in actor.export_hf_weights()}
        if rank == 0:
            torch.save(
                {"params": params, "metrics": metrics, "granularity": recomputing},
                out / f"{mode}-{layers}.pt",
            )
        del actor
        destroy_parallel(keep_process_group=True)
    destroy_parallel()


def _batch() -> dict:
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (4, 3, 5, 2)]
    responses = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (6, 8, 3, 5)]
    t = max(len(r) for r in responses)
    mask = torch.arange(t)[None] < torch.tensor([len(r) for r in responses])[:, None]
    old = torch.where(mask, -3.0 + 0.1 * torch.randn(4, t, generator=g), torch.zeros(4, t))
    advantages = torch.tensor([1.2, -0.8, 0.6, -1.0])[:, None] * mask
    return dict(
        prompts=prompts,
        responses=responses,
        old_logprobs=old,
        rollout_logprobs=old,
        token_advantages=advantages,
        pg_rows=torch.ones(4, dtype=torch.bool),
        distill_rows=torch.zeros(4, dtype=torch.bool),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen3_dir) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("recompute")
    torch.save(_batch(), out / "batch.pt")
    run_distributed(_worker, 2, str(out), str(tiny_qwen3_dir), timeout_s=600)
    return {f"{m}-{n}": torch.load(out / f"{m}-{n}.pt") for m, n in MODES}


def test_recompute_modes_reach_megatron(runs):
    assert runs["none-1"]["granularity"] is None
    assert runs["selective-1"]["granularity"] == "selective"
    assert runs["full-1"]["granularity"] == runs["full-2"]["granularity"] == "full"


@pytest.mark.parametrize("mode", ["selective-1", "full-1", "full-2"])
def test_recompute_gives_the_same_update(runs, mode):
    reference, ours = runs["none-1"], runs[mode]
    moved = max(
        (reference["params"][n] - ours["params"][n]).abs().max().item() for n in reference["params"]
    )
    assert moved < 1e-6, f"{mode}: parameters differ by {moved:.2e} from no recomputation"
    for key in ("loss", "grad_norm"):
        assert ours["metrics"][0][key] == pytest.approx(reference["metrics"][0][key], rel=1e-5)


def test_bad_recompute_settings_name_the_field():
    from rlrt_megatron.megatron.actor import ActorConfig

    with pytest.raises(ValueError, match="recompute must be one of"):
        ActorConfig(hf_path="x", recompute="everything")
    with pytest.raises(ValueError, match="recompute_num_layers must be >= 1"):
        ActorConfig(hf_path="x", recompute="full", recompute_num_layers=0)
