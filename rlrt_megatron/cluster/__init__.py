"""Ray orchestration: engine actors and their pool, placement, and weight-sync transport.

This package bridges the policy trainer (`rlrt_megatron.megatron`) and the generation engines
(`rlrt_megatron.rollout`): the trainer's exported (HF name, tensor) stream goes in through
`EnginePool.sync_weights`. Ray is imported lazily, inside the functions that need it.
"""

from rlrt_megatron.cluster.pool import (
    EngineFailure,
    EnginePool,
    EnginePoolConfig,
    PendingGeneration,
    SyncStats,
    split_evenly,
)
from rlrt_megatron.cluster.ray_cluster import RayConfig, init_ray
from rlrt_megatron.cluster.weight_sync import DEFAULT_BUCKET_BYTES, pack_buckets

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "EngineFailure",
    "EnginePool",
    "EnginePoolConfig",
    "PendingGeneration",
    "RayConfig",
    "SyncStats",
    "init_ray",
    "pack_buckets",
    "split_evenly",
]
