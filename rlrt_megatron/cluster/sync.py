"""Trainer → engines weight sync: from the Megatron ranks' shards to every vLLM engine.

    stats = sync_policy_weights(policy_group, engine_pool)        # after each update

What happens, and why this way:

1. Every trainer rank drains `PolicyActor.export_hf_weights` in lockstep: it yields one full HF
   tensor at a time, and producing each one runs the TP all-gathers and PP broadcasts over the
   ranks' process groups, so all ranks must step through it together.
2. Only **global rank 0** keeps what it gets. It is TP rank 0, PP rank 0 and DP rank 0; the export
   gathers across TP and broadcasts across PP stages, so it holds every full tensor, and all DP
   replicas hold the same weights. Rank 0 checks each name and shape against the engines'
   manifest, packs the tensors into flat buckets (`pack_buckets`, ``bucket_bytes`` each) and puts
   each bucket into the Ray object store as soon as it is full. It returns only the bucket
   ObjectRefs and the (name, shape) list (`PackedWeights`): the driver never holds the weights.
   At most one bucket plus one tensor is in rank 0's process memory at a time.
3. The driver checks the layout against the manifest once more (a full set, nothing unknown)
   and hands the refs to `EnginePool.load_packed_weights`: every engine reads each bucket straight
   from the object store (zero-copy on the same node), loads it through vLLM's layerwise reload,
   and at the end resets its prefix cache and adopts the new version, which every later
   `Sample.weight_version` carries. All or nothing, as `EnginePool.sync_weights`.

If rank 0 finds a bad name or shape, it stops packing but keeps draining the export (the other
ranks are inside its collectives and would otherwise hang), then raises: no engine is touched.

Ownership: the buckets are owned by rank 0's Ray actor (it put them), and the pool keeps the last
sync's refs to replay into replacement engines, so they live as long as the trainer group does.

Transports (``transport=``), all with the same checks, versioning and layerwise reload:

- ``object_store`` (above): the default on CPU. On GPUs it is a host-memory hop (device → pinned
  host → object store → engine device), but it lets the pool replay weights into a replacement
  engine by itself.
- ``broadcast``: rank 0 broadcasts the buckets over a process group it forms with every engine
  worker (`rlrt_megatron.transport.weight_group`; NCCL on GPUs, device to device; gloo on CPU), the
  disaggregated path of verl / NeMo-RL / slime. The group is formed once and re-formed when an
  engine is replaced (`BroadcastChannel`).
- ``cuda_ipc``: colocated on GPUs. Each trainer rank ``i`` serving engine ``i`` (the one on its
  GPU; every rank holds the full exported tensors) packs a bucket in GPU memory and hands the
  engine a CUDA IPC handle of it (`rlrt_megatron.transport.cuda_ipc`): nothing leaves the GPU.

With the direct transports (broadcast, cuda_ipc) the trainer holds the only copy of the weights:
a replaced engine is refilled from the trainer (`Placement` registers the refill with the pool).
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlrt_megatron.interfaces import RankGroup, WeightSyncTarget
from rlrt_megatron.transport.buckets import (
    DEFAULT_BUCKET_BYTES,
    pack_buckets,
    pack_flat_buckets,
)
from rlrt_megatron.transport.manifest import WeightManifest

if TYPE_CHECKING:
    from rlrt_megatron.cluster.pool import SyncStats

PACKING_RANK = 0
"""The global rank that packs and publishes the buckets (see the module docstring)."""


@dataclass(frozen=True)
class PackedWeights:
    """A full set of weights published to the Ray object store as buckets.

    ``refs[i]`` is the ObjectRef of a `WeightBucket` holding ``bucket_tensors[i]`` tensors in
    ``bucket_nbytes[i]`` bytes; ``tensors`` lists (HF name, shape) of every tensor, in order.
    """

    refs: list[Any] = field(repr=False)
    bucket_tensors: list[int]
    bucket_nbytes: list[int]
    tensors: list[tuple[str, tuple[int, ...]]] = field(repr=False)

    @property
    def num_tensors(self) -> int:
        return len(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(self.bucket_nbytes)


def publish_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    publish: bool,
    manifest: WeightManifest | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> PackedWeights | None:
    """Drain ``named_tensors`` completely; if ``publish``, pack it into buckets in the object store.

    Every rank calls this with the same stream (``publish`` only on the packing rank): the stream
    is drained to the end even when packing fails, so that ranks never stop at different points
    of the export's collectives; the packing rank raises afterwards. ``manifest``: check names
    and shapes (and that none is missing) while packing. Returns `PackedWeights` on the
    publishing rank, None elsewhere.
    """
    import ray

    stream = iter(named_tensors)
    if not publish:
        drain(stream)
        return None
    tensors: list[tuple[str, tuple[int, ...]]] = []
    refs: list[Any] = []
    counts: list[int] = []
    sizes: list[int] = []
    error: BaseException | None = None
    try:
        for bucket in pack_buckets(_checked(stream, manifest, tensors), bucket_bytes):
            refs.append(ray.put(bucket))  # the bucket leaves this process's heap here
            counts.append(len(bucket.tensors))
            sizes.append(bucket.nbytes)
        if manifest is not None:
            manifest.require_complete({n for n, _ in tensors})
        if not refs:
            raise ValueError("the policy exported no weights")
    except Exception as e:  # keep stepping through the export with the other ranks first
        error = e
    drain(stream)
    if error is not None:
        raise error
    return PackedWeights(refs=refs, bucket_tensors=counts, bucket_nbytes=sizes, tensors=tensors)


def drain(stream: Iterator[Any]) -> None:
    """Step through the rest of a rank's weight export, discarding it. The export runs
    collectives (TP/PP gathers) at every tensor, so every rank must step through all of it, in
    order, whatever it does with the tensors: a rank that stops early (it has nothing to send,
    or its packing failed) would leave the others waiting in a collective."""
    for _ in stream:
        pass


def _checked(
    stream: Iterator[tuple[str, torch.Tensor]],
    manifest: WeightManifest | None,
    layout: list[tuple[str, tuple[int, ...]]],
) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in stream:
        if manifest is not None:
            manifest.check(name, tuple(tensor.shape))
        layout.append((name, tuple(tensor.shape)))
        yield name, tensor


def publish_policy_weights(
    actor: Any, manifest: WeightManifest | None, bucket_bytes: int
) -> PackedWeights | None:
    """Run on every trainer rank (``actor`` is its `PolicyActor`): `publish_buckets` over its
    export, publishing on `PACKING_RANK`."""
    import torch.distributed as dist

    return publish_buckets(
        actor.export_hf_weights(),
        publish=dist.get_rank() == PACKING_RANK,
        manifest=manifest,
        bucket_bytes=bucket_bytes,
    )


Transport = Literal["object_store", "broadcast", "cuda_ipc"]
TRANSPORTS: tuple[str, ...] = typing.get_args(Transport)


def resolve_transport(transport: str, *, colocated: bool, platform: str) -> Transport:
    """``auto`` → object_store on CPU; on CUDA cuda_ipc when colocated, broadcast (NCCL) when
    disaggregated. An explicit choice is checked against the placement and platform."""
    if transport == "auto":
        if platform != "cuda":
            return "object_store"
        return "cuda_ipc" if colocated else "broadcast"
    if transport not in TRANSPORTS:
        raise ValueError(f"weight transport must be auto or one of {TRANSPORTS}, not {transport!r}")
    if transport == "cuda_ipc" and not (colocated and platform == "cuda"):
        raise ValueError(
            "weight_transport=cuda_ipc needs colocated placement on GPUs (the engine maps the"
            f" trainer rank's GPU memory); this is {'colocated' if colocated else 'disaggregated'}"
            f" on {platform}"
        )
    if transport == "broadcast" and colocated and platform == "cuda":
        raise ValueError(
            "weight_transport=broadcast cannot run colocated on GPUs: NCCL refuses two members"
            " on one GPU; use cuda_ipc (or auto)"
        )
    return transport  # type: ignore[return-value]


def sync_policy_weights(
    policy: RankGroup,
    pool: WeightSyncTarget,
    *,
    version: int | None = None,
    bucket_bytes: int | None = None,
    transport: Transport = "object_store",
    channel: BroadcastChannel | None = None,
    indices: list[int] | None = None,
) -> SyncStats:
    """Load the policy group's current weights into every engine of ``pool``.

    ``policy``: a `PolicyGroup` (or any group with ``run_all``); ``pool``: an `EnginePool`.
    ``version`` defaults to the pool's current version plus 1; ``bucket_bytes`` to the pool's
    configured bucket size. ``transport``: see the module docstring; ``broadcast`` takes the
    ``channel`` to reuse (without one, a group is formed for this sync and left after it).
    ``indices``: direct transports only, refill just those engines at the pool's version.
    Returns the pool's `SyncStats`. Raises before any engine is touched (object store), or with
    the engines restarted (direct transports), if the policy's weights do not match the engines'
    checkpoint layout.
    """
    bucket_bytes = pool.config.bucket_bytes if bucket_bytes is None else bucket_bytes
    if bucket_bytes < 0:
        raise ValueError(f"bucket_bytes must be >= 0, got {bucket_bytes}")
    if transport == "broadcast":
        own = channel is None  # a one-off group: left again after this sync
        used = channel or BroadcastChannel("nccl" if pool.platform == "cuda" else "gloo")

        def deliver(targets: list[int]) -> tuple[int, int, int]:
            return used.send(policy, pool, targets, bucket_bytes)

        try:
            return pool.load_direct_weights(deliver, version=version, indices=indices)
        finally:
            if own:
                used.close(policy, pool)
    if transport == "cuda_ipc":

        def deliver(targets: list[int]) -> tuple[int, int, int]:
            engines = {i: pool.engine(i) for i in targets}  # engine i beside rank i
            results = policy.run_all(share_policy_weights, engines, pool.manifest, bucket_bytes)
            served = [r for r in results if r is not None]
            if len(served) != len(targets):
                raise RuntimeError(f"{len(served)} trainer ranks served {len(targets)} engines")
            return served[0]

        return pool.load_direct_weights(deliver, version=version, indices=indices)
    if transport != "object_store":
        raise ValueError(f"unknown weight transport {transport!r} (one of {TRANSPORTS})")
    if indices is not None:
        raise ValueError("the object-store transport refills engines itself; indices not allowed")
    results = policy.run_all(publish_policy_weights, pool.manifest, bucket_bytes)
    packed = results[PACKING_RANK]
    if not isinstance(packed, PackedWeights):
        raise RuntimeError(f"rank {PACKING_RANK} published no weights (got {packed!r})")
    return pool.load_packed_weights(packed, version=version)


# -- broadcast ---------------------------------------------------------------------------------

_SENDER_GROUPS: dict[str, Any] = {}
"""On the packing rank: the weight groups it has joined, by name (`BroadcastChannel`)."""


class BroadcastChannel:
    """The driver's view of one broadcast weight group: the packing rank plus every worker of a
    set of engines. Formed on first use; formed anew when the engines differ (a replacement,
    a refill of some), the old group being left on both sides first."""

    def __init__(self, backend: str = "gloo", *, timeout_s: float = 300.0) -> None:
        self.backend = backend
        self.timeout_s = timeout_s
        self._members: tuple[str, ...] | None = None
        self._spec: Any = None
        self._engines: list[Any] = []

    def send(
        self, policy: RankGroup, pool: WeightSyncTarget, indices: list[int], bucket_bytes: int
    ) -> tuple[int, int, int]:
        """One broadcast of the policy's weights into engines ``indices`` (inside their open
        update); returns (buckets, tensors, bytes)."""
        import ray

        spec = self._ensure(policy, pool, indices)
        receiving = [pool.engine(i).receive_weight_broadcast.remote() for i in indices]
        try:
            results = policy.run_all(
                broadcast_policy_weights, spec.name, pool.manifest, bucket_bytes
            )
        except BaseException:
            ray.wait(receiving, num_returns=len(receiving), timeout=60)  # they got the abort
            self.close(policy, pool)
            raise
        try:
            received = ray.get(receiving)
        except BaseException:
            self.close(policy, pool)
            raise
        sent = results[PACKING_RANK]
        if any(n != sent[1] for n in received):
            raise RuntimeError(f"engines received {received} tensors of the {sent[1]} sent")
        return sent

    def _ensure(self, policy: RankGroup, pool: WeightSyncTarget, indices: list[int]) -> Any:
        import uuid

        import ray

        from rlrt_megatron.transport.weight_group import WeightGroupSpec

        members = tuple(pool.engine_id(i) for i in indices)
        if members == self._members:
            return self._spec
        self.close(policy, pool)
        host, port = policy.run_all(sender_address)[PACKING_RANK]
        workers = pool.config.engine.tensor_parallel_size
        spec = WeightGroupSpec(
            name=uuid.uuid4().hex[:12],
            host=host,
            port=port,
            world_size=1 + workers * len(indices),
            backend=self.backend,  # type: ignore[arg-type]
            timeout_s=self.timeout_s,
        )
        engines = [pool.engine(i) for i in indices]
        joining = [e.join_weight_group.remote(spec, 1 + k * workers) for k, e in enumerate(engines)]
        policy.run_all(join_sender_group, spec)  # returns once every member has joined
        ray.get(joining)
        self._members, self._spec, self._engines = members, spec, engines
        return spec

    def close(self, policy: RankGroup, pool: WeightSyncTarget | None = None) -> None:
        """Leave the group on every side that is still alive (idempotent)."""
        import ray

        if self._spec is None:
            return
        name, engines = self._spec.name, self._engines
        self._members, self._spec, self._engines = None, None, []
        refs = [e.leave_weight_group.remote() for e in engines]
        for ref in refs:
            try:
                ray.get(ref, timeout=30)
            except Exception:  # noqa: BLE001 (a dead or replaced engine has left already)
                pass
        policy.run_all(leave_sender_group, name)


def sender_address(actor: Any) -> tuple[str, int] | None:
    """On the packing rank: (node IP, free port) for the weight group's store."""
    import ray
    import torch.distributed as dist

    from rlrt_megatron.transport.weight_group import free_port

    if dist.get_rank() != PACKING_RANK:
        return None
    return ray.util.get_node_ip_address(), free_port()


def open_sender_groups(actor: Any) -> list[str]:
    """The weight groups this rank holds open (a diagnostic: at most one per channel)."""
    return sorted(_SENDER_GROUPS)


def join_sender_group(actor: Any, spec: Any) -> None:
    import torch.distributed as dist

    from rlrt_megatron.transport.weight_group import join_weight_group

    if dist.get_rank() == PACKING_RANK:  # (NCCL: on the device Megatron's init selected)
        _SENDER_GROUPS[spec.name] = join_weight_group(spec, 0)


def leave_sender_group(actor: Any, name: str) -> None:
    group = _SENDER_GROUPS.pop(name, None)
    if group is not None and hasattr(group.process_group, "shutdown"):
        group.process_group.shutdown()


def broadcast_policy_weights(
    actor: Any, group_name: str, manifest: WeightManifest | None, bucket_bytes: int
) -> tuple[int, int, int] | None:
    """Run on every trainer rank: drain the export; the packing rank broadcasts it as buckets
    (in GPU memory with NCCL) and returns (buckets, tensors, bytes). A layout error aborts the
    stream (the engines raise) and is raised here after the export is drained."""
    import torch.distributed as dist

    from rlrt_megatron.transport.weight_group import broadcast_buckets

    stream = iter(actor.export_hf_weights())
    if dist.get_rank() != PACKING_RANK:
        drain(stream)
        return None
    group = _SENDER_GROUPS[group_name]
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if group.spec.backend == "nccl"
        else torch.device("cpu")
    )
    layout: list[tuple[str, tuple[int, ...]]] = []
    buckets = pack_flat_buckets(
        _complete(_checked(stream, manifest, layout), manifest, layout), bucket_bytes, device=device
    )
    try:
        return broadcast_buckets(group, buckets, device)
    finally:
        drain(stream)  # the other ranks are inside the export's collectives


def _complete(
    stream: Iterator[tuple[str, torch.Tensor]],
    manifest: WeightManifest | None,
    layout: list[tuple[str, tuple[int, ...]]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """``stream``, then a check that it carried every tensor of ``manifest`` (raised inside the
    transport's loop, so that the receivers are told to abort)."""
    yield from stream
    if manifest is not None:
        manifest.require_complete({n for n, _ in layout})
    if not layout:
        raise ValueError("the policy exported no weights")


# -- CUDA IPC ----------------------------------------------------------------------------------


def share_policy_weights(
    actor: Any, engines: dict[int, Any], manifest: WeightManifest | None, bucket_bytes: int
) -> tuple[int, int, int] | None:
    """Run on every trainer rank: drain the export; rank ``i`` with an engine in ``engines``
    (engine ``i``, on the same GPU) packs buckets in GPU memory and has the engine load each
    through a CUDA IPC handle before packing the next. Returns (buckets, tensors, bytes) on
    serving ranks, None elsewhere."""
    import ray
    import torch.distributed as dist

    from rlrt_megatron.transport.cuda_ipc import share_bucket

    stream = iter(actor.export_hf_weights())
    engine = engines.get(dist.get_rank())
    if engine is None:
        drain(stream)
        return None
    device = torch.device("cuda", torch.cuda.current_device())
    layout: list[tuple[str, tuple[int, ...]]] = []
    sent = [0, 0, 0]
    try:
        checked = _complete(_checked(stream, manifest, layout), manifest, layout)
        for flat, metas in pack_flat_buckets(checked, bucket_bytes, device=device):
            torch.cuda.current_stream(device).synchronize()  # the bucket is written
            loaded = ray.get(engine.load_ipc_bucket.remote(share_bucket(flat, metas)))
            if loaded != len(metas):
                raise RuntimeError(f"the engine loaded {loaded} of a {len(metas)}-tensor bucket")
            sent[0] += 1
            sent[1] += len(metas)
            sent[2] += flat.numel()
            del flat
        torch.cuda.ipc_collect()
    finally:
        drain(stream)
    return sent[0], sent[1], sent[2]
