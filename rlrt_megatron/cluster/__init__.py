"""Ray orchestration: engine actors and their pool, placement, and weight-sync transport.

This package bridges the policy trainer (`rlrt_megatron.megatron`) and the generation engines
(`rlrt_megatron.rollout`): the trainer's exported (HF name, tensor) stream goes in through
`EnginePool.sync_weights` or `sync_policy_weights` (object store, broadcast, CUDA IPC). Ray is
imported lazily, inside the functions that need it.
"""

from rlrt_megatron.cluster.agreement import LogprobAgreement, logprob_agreement
from rlrt_megatron.cluster.placement import Placement, PlacementConfig
from rlrt_megatron.cluster.policy_group import PolicyGroup, PolicyGroupConfig
from rlrt_megatron.cluster.pool import (
    EngineFailure,
    EnginePool,
    EnginePoolConfig,
    PendingGeneration,
    SyncStats,
    split_evenly,
)
from rlrt_megatron.cluster.ray_cluster import RayConfig, init_ray
from rlrt_megatron.cluster.sync import (
    BroadcastChannel,
    PackedWeights,
    resolve_transport,
    sync_policy_weights,
)
from rlrt_megatron.cluster.worker_group import WorkerGroup, WorkerGroupConfig, WorkerGroupError
from rlrt_megatron.transport.buckets import (
    DEFAULT_BUCKET_BYTES,
    pack_buckets,
    pack_flat_buckets,
)

__all__ = [
    "BroadcastChannel",
    "DEFAULT_BUCKET_BYTES",
    "LogprobAgreement",
    "PackedWeights",
    "Placement",
    "PlacementConfig",
    "PolicyGroup",
    "PolicyGroupConfig",
    "WorkerGroup",
    "WorkerGroupConfig",
    "WorkerGroupError",
    "logprob_agreement",
    "sync_policy_weights",
    "EngineFailure",
    "EnginePool",
    "EnginePoolConfig",
    "PendingGeneration",
    "RayConfig",
    "SyncStats",
    "init_ray",
    "pack_buckets",
    "pack_flat_buckets",
    "resolve_transport",
    "split_evenly",
]
