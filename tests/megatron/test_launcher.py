"""The process launcher: environment, results, failures, timeouts, in-process mode."""

from __future__ import annotations

import os
import time

import pytest

from rlrt_megatron.megatron.launcher import (
    LaunchTimeout,
    WorkerError,
    external_launch_env,
    launch,
)

pytestmark = pytest.mark.distributed

_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
)


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch):
    """Tests start from a plain process, even when pytest itself runs under torchrun/Slurm."""
    for name in _LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


def _report_env(rank: int, tag: str) -> dict:
    import torch

    return {
        "rank": rank,
        "tag": tag,
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        **{name: os.environ[name] for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")},
        "port": int(os.environ["MASTER_PORT"]),
    }


def _all_reduce_rank(rank: int) -> float:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return value.item()


def _fail_on_rank_one(rank: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if rank == 1:
        raise ValueError("bad batch on rank one")
    dist.barrier()  # rank 0 waits here forever: the launcher must stop it


def _exit_hard(rank: int) -> None:
    if rank == 1:
        os._exit(3)
    time.sleep(60)


def _sleep(rank: int, seconds: float) -> None:
    time.sleep(seconds)


def _unpicklable_result(rank: int):
    return lambda: rank


def test_spawned_ranks_get_the_environment_and_return_values():
    results = launch(_report_env, 2, "x", threads_per_worker=1, timeout_s=120)
    assert sorted(results) == [0, 1]
    for rank, env in results.items():
        assert env["rank"] == rank and env["tag"] == "x"
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "2")
        assert env["MASTER_ADDR"] == "127.0.0.1" and env["threads"] == 1
        assert env["pid"] != os.getpid()
    assert results[0]["port"] == results[1]["port"]


def test_workers_form_a_gloo_process_group():
    assert launch(_all_reduce_rank, 2, timeout_s=120) == {0: 3.0, 1: 3.0}


def test_first_failure_is_raised_with_the_rank_traceback():
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        launch(_fail_on_rank_one, 2, timeout_s=120)
    assert info.value.rank == 1
    assert "ValueError: bad batch on rank one" in str(info.value)
    assert "_fail_on_rank_one" in info.value.remote_traceback  # the worker's own frames
    assert time.monotonic() - start < 60  # rank 0, stuck in a barrier, was terminated


def test_worker_that_dies_without_exception_is_reported():
    with pytest.raises(WorkerError, match="exited with code 3") as info:
        launch(_exit_hard, 2, timeout_s=120)
    assert info.value.rank == 1 and info.value.remote_traceback is None


def test_timeout_kills_the_workers():
    start = time.monotonic()
    with pytest.raises(LaunchTimeout, match=r"ranks still running: \[0\]"):
        launch(_sleep, 1, 120.0, timeout_s=5)
    assert time.monotonic() - start < 60


def test_unpicklable_function_and_result_are_clear_errors():
    with pytest.raises(TypeError, match="module-level function"):
        launch(lambda rank: rank, 1)
    with pytest.raises(WorkerError, match="cannot be pickled"):
        launch(_unpicklable_result, 1, timeout_s=120)


def test_bad_arguments():
    with pytest.raises(ValueError, match="nprocs"):
        launch(_sleep, 0, 0.0)
    with pytest.raises(ValueError, match="timeout_s"):
        launch(_sleep, 1, 0.0, timeout_s=0)


def test_already_launched_runs_in_process(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    results = launch(_report_env, 1, "inline")
    assert results[0]["pid"] == os.getpid() and results[0]["LOCAL_RANK"] == "0"
    with pytest.raises(ValueError, match="world of 1, but the command needs 2 processes"):
        launch(_report_env, 2, "inline")


def test_slurm_variables_are_translated(monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    with pytest.raises(RuntimeError, match="MASTER_ADDR and MASTER_PORT not exported"):
        external_launch_env()
    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert external_launch_env() == {"rank": 3, "local_rank": 1, "world_size": 4}
