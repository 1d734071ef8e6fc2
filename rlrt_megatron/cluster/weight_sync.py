"""Sender side of weight sync: moved to `rlrt_megatron.transport.buckets` (the leaf both the
cluster and the engines use); its names stay importable from here."""

from rlrt_megatron.transport.buckets import DEFAULT_BUCKET_BYTES, pack_buckets, pack_flat_buckets

__all__ = ["DEFAULT_BUCKET_BYTES", "pack_buckets", "pack_flat_buckets"]
