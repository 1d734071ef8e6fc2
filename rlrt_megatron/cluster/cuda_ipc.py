"""CUDA IPC weight transport: moved to `rlrt_megatron.transport.cuda_ipc` (the leaf both the
cluster and the engines use); its names stay importable from here."""

from rlrt_megatron.transport.cuda_ipc import SharedBucket, device_uuid, open_bucket, share_bucket

__all__ = ["SharedBucket", "device_uuid", "open_bucket", "share_bucket"]
