"""Sender side of weight sync: pack (HF name, tensor) pairs into flat byte buckets.

The trainer side produces full (TP/PP-gathered) tensors under Hugging Face names, one at a time
(e.g. mbridge's ``export_weights``). `pack_buckets` copies them into flat host buffers of about
``bucket_bytes`` each, so that delivering a model to an engine costs a handful of large transfers
instead of one remote call per parameter (hundreds for a 4B model). The format itself, and the
receiving end, live in `rlrt_megatron.rollout.weights`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from rlrt_megatron.rollout.weights import TensorMeta, WeightBucket, aligned, dtype_name

DEFAULT_BUCKET_BYTES = 512 * 2**20


def pack_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[WeightBucket]:
    """Yield `WeightBucket`s of at most ``bucket_bytes`` each (except a single larger tensor).

    Tensors keep their dtype and order. A tensor bigger than ``bucket_bytes`` travels alone in a
    bucket of its own size, so ``bucket_bytes=0`` means one tensor per bucket (the per-parameter
    baseline). Each tensor is copied once, into the bucket; the input iterator is consumed lazily,
    so at most one bucket (plus the tensor being read) is held at a time.
    """
    for flat, metas in pack_flat_buckets(named_tensors, bucket_bytes, device="cpu"):
        yield WeightBucket(buffer=flat.numpy(), tensors=metas)


def pack_flat_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    *,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, tuple[TensorMeta, ...]]]:
    """`pack_buckets`' grouping, as (flat 1-D uint8 tensor on ``device``, its `TensorMeta`s).

    The direct transports (`rlrt_megatron.cluster.weight_group` broadcast, CUDA IPC) pack into
    device memory with this: on a GPU the bucket never leaves it. A CPU bucket is pinned when
    its tensors come from a GPU (fast device→host copies).
    """
    if bucket_bytes < 0:
        raise ValueError(f"bucket_bytes must be >= 0, got {bucket_bytes}")
    pending: list[tuple[str, torch.Tensor]] = []
    pending_bytes = 0
    seen: set[str] = set()
    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice in one weight sync")
        seen.add(name)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        dtype_name(tensor.dtype)  # fail early on a dtype that cannot travel
        size = aligned(tensor.numel() * tensor.element_size())
        if pending and pending_bytes + size > bucket_bytes:
            yield _pack(pending, pending_bytes, torch.device(device))
            pending, pending_bytes = [], 0
        pending.append((name, tensor))
        pending_bytes += size
    if pending:
        yield _pack(pending, pending_bytes, torch.device(device))


def _pack(
    named: list[tuple[str, torch.Tensor]], total: int, device: torch.device
) -> tuple[torch.Tensor, tuple[TensorMeta, ...]]:
    # Pinned host memory makes the device→host copies of GPU tensors asynchronous-capable and fast.
    pin = device.type == "cpu" and any(t.is_cuda for _, t in named)
    flat = torch.empty(total, dtype=torch.uint8, device=device, pin_memory=pin)
    metas = []
    offset = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        src = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        flat[offset : offset + nbytes].copy_(src)  # device→host here when packing GPU tensors
        metas.append(
            TensorMeta(
                name=name,
                dtype=dtype_name(tensor.dtype),
                shape=tuple(tensor.shape),
                offset=offset,
                nbytes=nbytes,
            )
        )
        offset += aligned(nbytes)
    return flat, tuple(metas)
