"""Bucket packing (sender side) against unpacking (receiver side), both in transport/: no
engine. Loading into a real engine is tested in test_engine_pool.py."""

from __future__ import annotations

import pytest
import torch

from rlrt_megatron.transport.buckets import ALIGNMENT, pack_buckets


def _named_tensors():
    g = torch.Generator().manual_seed(0)
    return [
        ("model.embed_tokens.weight", torch.randn(50, 16, generator=g)),
        ("model.norm.weight", torch.randn(16, generator=g).to(torch.bfloat16)),
        (
            "model.layers.0.self_attn.q_proj.weight",
            torch.randn(7, 3, generator=g).to(torch.float16),
        ),
        ("scalar", torch.tensor(3.5)),
        ("int_buffer", torch.arange(5, dtype=torch.int64)),
        ("transposed", torch.randn(4, 6, generator=g).t()),  # non-contiguous input
    ]


@pytest.mark.parametrize("bucket_bytes", [0, 100, 1024, 1 << 20])
def test_pack_unpack_roundtrip_is_bitwise(bucket_bytes):
    named = _named_tensors()
    buckets = list(pack_buckets(iter(named), bucket_bytes))
    unpacked = [pair for b in buckets for pair in b.named_tensors()]
    assert [n for n, _ in unpacked] == [n for n, _ in named]
    for (_, got), (_, want) in zip(unpacked, named, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    for b in buckets:
        assert all(m.offset % ALIGNMENT == 0 for m in b.tensors)
        # only a lone tensor may exceed the bucket size
        assert b.nbytes <= max(bucket_bytes, ALIGNMENT) or len(b.tensors) == 1


def test_bucket_counts_follow_the_size():
    named = _named_tensors()
    assert len(list(pack_buckets(named, 0))) == len(named)  # the per-parameter baseline
    assert len(list(pack_buckets(named, 1 << 20))) == 1
    # 50*16*4 = 3200 bytes for the embedding alone: a 1 KiB bucket holds it alone, then the rest
    sizes = [len(b.tensors) for b in pack_buckets(named, 1024)]
    assert sizes[0] == 1 and sum(sizes) == len(named)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="appears twice"):
        list(pack_buckets([("a", torch.ones(1)), ("a", torch.ones(1))]))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        list(pack_buckets([("a", [1.0])]))
    with pytest.raises(TypeError, match="cannot travel"):
        list(pack_buckets([("a", torch.ones(1, dtype=torch.complex64))]))
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(pack_buckets([("a", torch.ones(1))], -1))


def test_the_old_module_paths_still_export_the_transport_names():
    """The transport moved to `rlrt_megatron.transport`; the old import paths are kept."""
    from rlrt_megatron import transport
    from rlrt_megatron.cluster import cuda_ipc, weight_group, weight_sync
    from rlrt_megatron.rollout import weights
    from rlrt_megatron.transport import cuda_ipc as new_ipc
    from rlrt_megatron.transport import weight_group as new_group

    assert weight_sync.pack_buckets is transport.pack_buckets
    assert weight_sync.pack_flat_buckets is transport.pack_flat_buckets
    assert weights.WeightBucket is transport.WeightBucket
    assert weights.WeightManifest is transport.WeightManifest
    assert weights.unpack_flat is transport.unpack_flat
    assert weight_group.WeightGroupSpec is new_group.WeightGroupSpec
    assert weight_group.join_weight_group is new_group.join_weight_group
    assert cuda_ipc.share_bucket is new_ipc.share_bucket
