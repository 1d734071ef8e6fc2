"""The trainer ranks' rendezvous: with the launch's secret set (as this project's launchers do)
the store listens on MASTER_ADDR only and forms the world only when every rank proves the
secret; a rank with another secret is refused on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
from _dist import run_distributed

pytestmark = pytest.mark.distributed


def _world(rank: int, out_dir: str, secrets: list[str]) -> None:
    import os

    import torch
    import torch.distributed as dist

    from rlrt_megatron.megatron.parallel import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
    )
    from rlrt_megatron.store_auth import SECRET_ENV, StoreAuthError

    os.environ[SECRET_ENV] = secrets[rank]
    try:
        initialize_parallel(ParallelConfig(timeout_minutes=1))
    except StoreAuthError as error:
        Path(out_dir, f"rank{rank}").write_text(f"refused: {error}")
        return
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    Path(out_dir, f"rank{rank}").write_text(f"formed: {total.item():g}")
    destroy_parallel()


def test_ranks_with_the_launch_secret_form_the_world(tmp_path):
    run_distributed(_world, 2, str(tmp_path), ["s3cret", "s3cret"], timeout_s=120)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["formed: 3"] * 2


def test_a_rank_without_the_secret_is_refused_everywhere(tmp_path):
    run_distributed(_world, 2, str(tmp_path), ["s3cret", "guess"], timeout_s=120)
    results = [(tmp_path / f"rank{r}").read_text() for r in range(2)]
    assert all(r.startswith("refused: trainer ranks") for r in results), results
    assert "member(s) [1] did not prove" in results[0]


def test_the_launcher_sets_a_secret_and_the_world_forms():
    from rlrt_megatron.megatron.launcher import launch

    results = launch(_secret_and_world, 2, timeout_s=120)
    assert results[0] == results[1] and len(results[0]) == 64  # the same fresh secret


def _secret_and_world(rank: int) -> str:
    import os

    from rlrt_megatron.megatron.parallel import destroy_parallel, initialize_parallel
    from rlrt_megatron.store_auth import SECRET_ENV

    initialize_parallel()
    destroy_parallel()
    return os.environ[SECRET_ENV]
