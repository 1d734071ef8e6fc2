"""Layout validation of rlrt_megatron.megatron.parallel, before any process group starts.

The initialized path (gloo, TP/PP/DP groups) is exercised by test_model_parity.py.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from rlrt_megatron.megatron.parallel import ParallelConfig, initialize_parallel


def test_data_parallel_is_what_is_left():
    config = ParallelConfig(tensor_parallel=2, pipeline_parallel=2)
    assert config.data_parallel(8) == 2
    with pytest.raises(ValueError, match="world size 6 is not divisible by TP\\*PP"):
        config.data_parallel(6)


@pytest.mark.parametrize("field", ["tensor_parallel", "pipeline_parallel"])
def test_sizes_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        ParallelConfig(**{field: 0})


def test_bad_layout_fails_before_any_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # nothing listens: a started group would hang
    with pytest.raises(ValueError, match="world size 2 is not divisible"):
        initialize_parallel(ParallelConfig(tensor_parallel=4))
    assert not dist.is_initialized()


def test_missing_launcher_environment_is_named(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT"):
        initialize_parallel(ParallelConfig())
    assert not dist.is_initialized()
