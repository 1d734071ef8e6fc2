"""How an update's micro-batch metrics combine over micro-batches and DP ranks (`_Record`):
sums, token-weighted means and maxima (the trainer/engine log-prob gap's max), on 2 gloo ranks."""

from __future__ import annotations

import json

import pytest
from _dist import run_distributed

pytestmark = pytest.mark.distributed


def _reduce_on_rank(rank: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from rlrt_megatron.megatron.train_step import _Record

    dist.init_process_group("gloo")
    record = _Record()
    for diff_max, tokens in ((0.5 + rank, 4.0), (0.25, 2.0)):
        metrics = {
            "rollout_is_logprob_diff_max": diff_max,
            "rollout_is_logprob_diff_mean": 0.1 * (rank + 1),
            "pg_tokens": tokens,
        }
        record.add(torch.tensor(1.0), metrics, weight=tokens)
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(record.reduce(owner=True), f)
    dist.destroy_process_group()


def test_micro_batch_metrics_sum_average_and_max_over_ranks(tmp_path):
    run_distributed(_reduce_on_rank, 2, str(tmp_path))
    for rank in range(2):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["rollout_is_logprob_diff_max"] == pytest.approx(1.5)  # rank 1's first
        # token-weighted: (0.1 * 6 + 0.2 * 6) / 12 tokens
        assert out["rollout_is_logprob_diff_mean"] == pytest.approx(0.15)
        assert out["loss"] == pytest.approx(4.0) and out["pg_tokens"] == pytest.approx(12.0)
