"""A group of Ray actors that form one torch.distributed world (the trainer's Megatron ranks).

The driver (the RL loop) is a single controller: it asks every rank of the group to run the same
method (SPMD: Megatron's collectives need all ranks), and gets back each rank's result. Each
actor gets the launcher environment torch.distributed expects (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) before the object it hosts is built, so the hosted code initializes
its process groups exactly as under torchrun or Slurm.

Placement: one placement group with one bundle per rank, rank i in bundle i; ``PACK`` keeps ranks
together (a node's GPUs), ``SPREAD``/``STRICT_SPREAD`` spreads them. On CPU a rank needs no GPU
and may ask for a fraction of a CPU (Ray resources are logical).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rlrt_megatron.cluster.actor_logs import actor_log_file, redirect_output
from rlrt_megatron.store_auth import SECRET_ENV, new_secret

PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


class WorkerGroupError(RuntimeError):
    """A rank failed; the message names the rank and carries its error."""


@dataclass(frozen=True, kw_only=True)
class WorkerGroupConfig:
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    placement_strategy: PlacementStrategy = "PACK"
    placement_timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every rank (e.g. NCCL settings, OMP_NUM_THREADS)."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ValueError("cpus_per_worker and gpus_per_worker must be >= 0")


class RankWorker:
    """One rank: holds one object (built by a picklable factory) and runs calls on it."""

    def __init__(
        self, rank: int, world_size: int, env: dict[str, str], log_file: str | None = None
    ) -> None:
        redirect_output(log_file)  # first: megatron's and torch's output goes to the run's logs/
        os.environ.update(env)
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size))
        self.rank = rank
        self.obj: Any = None

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        """A free TCP port on this node (rank 0 hosts the rendezvous)."""
        from rlrt_megatron.transport.weight_group import free_port

        return free_port()

    def set_env(self, env: dict[str, str]) -> None:
        os.environ.update(env)

    def setup(self, factory: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.obj = factory(*args, **kwargs)

    def call(self, method: str, args: tuple, kwargs: dict, keep: bool = True) -> Any:
        """The hosted object's ``method(*args, **kwargs)``; ``keep=False`` returns None instead
        (the result stays here: nothing travels back to the driver)."""
        result = getattr(self.obj, method)(*args, **kwargs)
        return result if keep else None

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """``fn(hosted_object, *args, **kwargs)`` on this rank (``fn`` must be importable)."""
        return fn(self.obj, *args, **kwargs)


def _put_once(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """The call's arguments in the object store, once: every rank's task gets the same refs
    (Ray resolves top-level refs before the call), instead of one serialized copy per rank
    through the driver."""
    import ray

    return ray.put(args), ray.put(kwargs)


class WorkerGroup:
    """``config.num_workers`` ranks. By default the group makes (and later removes) its own
    placement group; given ``placement_group``, rank ``i`` goes into its bundle
    ``bundle_indices[i]``, asking only for its own share, so that others (engines) can share the
    bundles; the group then leaves the placement group in place at shutdown."""

    def __init__(
        self,
        config: WorkerGroupConfig,
        *,
        placement_group: Any | None = None,
        bundle_indices: Sequence[int] | None = None,
    ) -> None:
        import ray
        from ray.util.placement_group import placement_group as make_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.config = config
        n = config.num_workers
        bundle = {"CPU": config.cpus_per_worker}
        if config.gpus_per_worker:
            bundle["GPU"] = config.gpus_per_worker
        self._owns_pg = placement_group is None
        if placement_group is None:
            if bundle_indices is not None:
                raise ValueError("bundle_indices given without a placement_group")
            placement_group = make_placement_group(
                [dict(bundle) for _ in range(n)], config.placement_strategy
            )
        indices = list(range(n)) if bundle_indices is None else list(bundle_indices)
        if len(indices) != n:
            raise ValueError(f"{len(indices)} bundle indices for {n} ranks")
        self._pg = placement_group
        ready, _ = ray.wait([placement_group.ready()], timeout=config.placement_timeout_s)
        if not ready:
            if self._owns_pg:
                ray.util.remove_placement_group(placement_group)
            raise WorkerGroupError(
                f"the cluster did not grant {n} bundles of {bundle} ({config.placement_strategy}) "
                f"within {config.placement_timeout_s:.0f} s: check `ray status` for free resources"
            )
        remote = ray.remote(RankWorker)
        self.workers = [
            remote.options(
                num_cpus=config.cpus_per_worker,
                num_gpus=config.gpus_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=index
                ),
            ).remote(rank, n, dict(config.env), actor_log_file(f"rank_{rank}"))
            for rank, index in enumerate(indices)
        ]
        ips = self._gather([w.node_ip.remote() for w in self.workers])
        master_port = self._gather([self.workers[0].free_port.remote()])[0]
        # LOCAL_RANK: the rank's index among the group's ranks on its own node.
        seen: dict[str, int] = {}
        envs = []
        # The ranks' rendezvous store listens on MASTER_ADDR only and admits only ranks that
        # prove this secret (rlrt_megatron.store_auth); it reaches them through Ray.
        secret = new_secret()
        for ip in ips:
            local_rank = seen.get(ip, 0)
            seen[ip] = local_rank + 1
            envs.append(
                {
                    "MASTER_ADDR": ips[0],
                    "MASTER_PORT": str(master_port),
                    "LOCAL_RANK": str(local_rank),
                    SECRET_ENV: secret,
                }
            )
        ray.get([w.set_env.remote(env) for w, env in zip(self.workers, envs, strict=True)])

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def _gather(self, refs: Sequence[Any]) -> list[Any]:
        import ray

        results = []
        for rank, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except Exception as error:  # RayTaskError / RayActorError wrap the rank's failure
                cause = getattr(error, "cause", None) or error
                log = actor_log_file(f"rank_{rank}")
                see = "" if log is None else f" (its output: {log})"
                raise WorkerGroupError(
                    f"rank {rank} failed{see}: {type(cause).__name__}: {cause}"
                ) from error
        return results

    def setup(self, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Build the hosted object on every rank: ``factory(*args, **kwargs)`` (SPMD)."""
        self._gather([w.setup.remote(factory, args, kwargs) for w in self.workers])

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` of the hosted object on every rank; results in rank order."""
        args_ref, kwargs_ref = _put_once(args, kwargs)
        return self._gather([w.call.remote(method, args_ref, kwargs_ref) for w in self.workers])

    def call_all_first(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Like `call_all`, but only rank 0's result comes back (every rank's call is still
        awaited, so a failing rank is reported): for SPMD calls whose result is the same on
        every rank, e.g. a whole batch's scores."""
        args_ref, kwargs_ref = _put_once(args, kwargs)
        refs = [
            w.call.remote(method, args_ref, kwargs_ref, rank == 0)
            for rank, w in enumerate(self.workers)
        ]
        return self._gather(refs)[0]

    def run_all(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(hosted_object, *args, **kwargs)`` on every rank; results in rank order."""
        args_ref, kwargs_ref = _put_once(args, kwargs)
        return self._gather([w.run.remote(fn, args_ref, kwargs_ref) for w in self.workers])

    def shutdown(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        if self._owns_pg and self._pg is not None:
            ray.util.remove_placement_group(self._pg)
        self._pg = None

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
