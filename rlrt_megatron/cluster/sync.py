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

On GPUs the object store is a host-memory hop (device → pinned host → object store → engine
device). The faster transport there is an NCCL broadcast from rank 0 to the engines' workers over
a process group spanning both (what verl/NeMo-RL/slime do for disaggregated placement) or CUDA IPC
handles when colocated; neither can run on this CPU-only machine, so only the object-store path is
implemented and tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rlrt_megatron.cluster.weight_sync import DEFAULT_BUCKET_BYTES, pack_buckets
from rlrt_megatron.rollout.weights import WeightManifest

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
        for _ in stream:
            pass
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
        if manifest is not None and (missing := manifest.missing({n for n, _ in tensors})):
            raise ValueError(
                f"the exported weights lack {len(missing)} of the engines' tensors, e.g."
                f" {missing[:3]}"
            )
        if not refs:
            raise ValueError("the policy exported no weights")
    except Exception as e:  # keep stepping through the export with the other ranks first
        error = e
    for _ in stream:
        pass
    if error is not None:
        raise error
    return PackedWeights(refs=refs, bucket_tensors=counts, bucket_nbytes=sizes, tensors=tensors)


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


def sync_policy_weights(
    policy: Any,
    pool: Any,
    *,
    version: int | None = None,
    bucket_bytes: int | None = None,
) -> Any:
    """Load the policy group's current weights into every engine of ``pool``.

    ``policy``: a `PolicyGroup` (or any group with ``run_all``); ``pool``: an `EnginePool`.
    ``version`` defaults to the pool's current version plus 1; ``bucket_bytes`` to the pool's
    configured bucket size. Returns the pool's `SyncStats`. Raises before any engine is touched
    if the policy's weights do not match the engines' checkpoint layout.
    """
    bucket_bytes = pool.config.bucket_bytes if bucket_bytes is None else bucket_bytes
    if bucket_bytes < 0:
        raise ValueError(f"bucket_bytes must be >= 0, got {bucket_bytes}")
    results = policy.run_all(publish_policy_weights, pool.manifest, bucket_bytes)
    packed = results[PACKING_RANK]
    if not isinstance(packed, PackedWeights):
        raise RuntimeError(f"rank {PACKING_RANK} published no weights (got {packed!r})")
    return pool.load_packed_weights(packed, version=version)
