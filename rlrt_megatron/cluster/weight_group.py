"""Broadcast weight transport: moved to `rlrt_megatron.transport.weight_group` (the leaf both the
cluster and the engines use); its names stay importable from here."""

from rlrt_megatron.transport.weight_group import (
    Backend,
    WeightGroup,
    WeightGroupAborted,
    WeightGroupAuthError,
    WeightGroupSpec,
    authenticate_members,
    broadcast_buckets,
    free_port,
    join_weight_group,
    make_process_group,
    receive_buckets,
)

__all__ = [
    "Backend",
    "WeightGroup",
    "WeightGroupAborted",
    "WeightGroupAuthError",
    "WeightGroupSpec",
    "authenticate_members",
    "broadcast_buckets",
    "free_port",
    "join_weight_group",
    "make_process_group",
    "receive_buckets",
]
