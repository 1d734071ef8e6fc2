"""The weight-bucket format and its packing: how (HF name, tensor) pairs travel to the engines.

A `WeightBucket` is one flat byte buffer holding several tensors back to back, plus one
`TensorMeta` per tensor (HF name, dtype, shape, byte offset). The trainer side produces full
(TP/PP-gathered) tensors under Hugging Face names, one at a time (e.g. mbridge's
``export_weights``); `pack_buckets` copies them into flat buffers of about ``bucket_bytes`` each,
so that delivering a model to an engine costs a handful of large transfers instead of one remote
call per parameter (hundreds for a 4B model). `unpack_flat` gives the tensors back as zero-copy
views on the receiving side (`rlrt_megatron.rollout.weights.WeightUpdateExtension`, inside each
vLLM worker).

The buffer is a 1-D ``numpy.uint8`` array on purpose: Ray stores numpy arrays in its shared-memory
object store and hands them to actors on the same node without a copy. Dtypes numpy lacks
(bfloat16) are no obstacle: the bytes are reinterpreted with torch on the receiving side.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

# Every tensor starts at a multiple of this many bytes, so that reinterpreting a byte slice as any
# dtype is legal (torch requires the offset to be a multiple of the element size) and GPU copies
# stay aligned.
ALIGNMENT = 64

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def dtype_name(dtype: torch.dtype) -> str:
    """The name a dtype travels under in a `TensorMeta` (``torch.bfloat16`` → ``"bfloat16"``)."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise TypeError(
            f"dtype {dtype} cannot travel in a weight bucket (supported: {sorted(_DTYPES)})"
        )
    return name


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class WeightBucket:
    """Several tensors in one flat buffer: ``buffer`` is 1-D uint8, ``tensors`` its parts."""

    buffer: np.ndarray
    tensors: tuple[TensorMeta, ...]

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def named_tensors(self, device: torch.device | str = "cpu") -> list[tuple[str, torch.Tensor]]:
        """The bucket's tensors as views of one buffer on ``device`` (one copy when not CPU)."""
        with warnings.catch_warnings():
            # A buffer from Ray's object store is read-only; the views are only ever read.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            flat = torch.from_numpy(self.buffer)
        return unpack_flat(flat.to(device, non_blocking=True), self.tensors)


def unpack_flat(
    flat: torch.Tensor, tensors: tuple[TensorMeta, ...] | list[TensorMeta]
) -> list[tuple[str, torch.Tensor]]:
    """(name, view) for each `TensorMeta` of a flat 1-D uint8 buffer, without copying.

    Raises ValueError when a tensor does not fit in the buffer (a truncated transfer)."""
    if flat.dtype != torch.uint8 or flat.dim() != 1:
        raise ValueError(f"a weight bucket is a 1-D uint8 tensor, got {flat.dtype} {flat.shape}")
    out = []
    for meta in tensors:
        if meta.offset + meta.nbytes > flat.numel():
            raise ValueError(
                f"{meta.name}: bytes [{meta.offset}, {meta.offset + meta.nbytes}) lie outside the"
                f" {flat.numel()}-byte bucket"
            )
        part = flat[meta.offset : meta.offset + meta.nbytes]
        out.append((meta.name, part.view(_DTYPES[meta.dtype]).view(meta.shape)))
    return out


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

    The direct transports (`rlrt_megatron.transport.weight_group` broadcast, CUDA IPC) pack into
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
