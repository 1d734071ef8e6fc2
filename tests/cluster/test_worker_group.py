import os
import sys

import pytest
import ray.cloudpickle

from rlrt_megatron.cluster.worker_group import WorkerGroup, WorkerGroupConfig, WorkerGroupError

# The hosted test class lives in this test module, which Ray workers cannot import by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class AllReduceRank:
    """Joins a gloo world from the launcher environment the group set, like a Megatron rank."""

    def __init__(self, scale: float) -> None:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        self.scale = scale

    def reduce(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value * self.scale * (dist.get_rank() + 1)])
        dist.all_reduce(t)
        return float(t.item())

    def env(self) -> dict[str, str]:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "EXTRA")
        return {k: os.environ[k] for k in keys}

    def fail_on(self, rank: int) -> None:
        import torch.distributed as dist

        if dist.get_rank() == rank:
            raise ValueError("bad input on this rank")


def doubled(obj: AllReduceRank, x: float) -> float:
    return 2 * obj.reduce(x)


@pytest.fixture(scope="module")
def group(ray_cluster):
    # Tiny CPU requests: the session's engine pool may hold most of the 2 logical CPUs.
    config = WorkerGroupConfig(num_workers=2, cpus_per_worker=0.05, env={"EXTRA": "1"})
    with WorkerGroup(config) as g:
        g.setup(AllReduceRank, 0.5)
        yield g


def test_ranks_form_one_torch_distributed_world(group):
    # Σ_r 0.5 · 3 · (r + 1) = 1.5 · 3 = 4.5 on every rank.
    assert group.call_all("reduce", 3.0) == [4.5, 4.5]
    assert group.run_all(doubled, 3.0) == [9.0, 9.0]
    envs = group.call_all("env")
    assert [e["RANK"] for e in envs] == ["0", "1"] and envs[0]["WORLD_SIZE"] == "2"
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1"]  # one node
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] and envs[1]["EXTRA"] == "1"


def test_a_failing_rank_is_named(group):
    with pytest.raises(WorkerGroupError, match="rank 1 failed: ValueError: bad input on this rank"):
        group.call_all("fail_on", 1)


def test_arguments_go_to_the_object_store_once_and_one_result_comes_back(group, monkeypatch):
    import ray

    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value: puts.append(value) or real_put(value))
    assert group.call_all_first("reduce", 3.0) == 4.5  # rank 0's result, ranks got the value
    assert puts == [(3.0,), {}]  # one copy of the arguments for both ranks
    assert group.run_all(doubled, x=3.0) == [9.0, 9.0]
    # keep=False: the rank's result stays on the rank.
    assert ray.get(group.workers[1].call.remote("env", (), {}, False)) is None
    with pytest.raises(WorkerGroupError, match="rank 1 failed: ValueError"):
        group.call_all_first("fail_on", 1)  # a failing rank other than 0 is still reported


def test_bad_config():
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        WorkerGroupConfig(num_workers=0)
