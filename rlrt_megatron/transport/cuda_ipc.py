"""CUDA IPC weight transport, for colocated placement: the engine reads the trainer's GPU bucket.

    shared = share_bucket(flat, metas)               # trainer rank, bucket in its GPU memory
    ray.get(engine.load_ipc_bucket.remote(shared))   # engine on the same GPU maps it, loads it
    del flat                                         # only after the engine is done with it

When an engine shares a GPU with a trainer rank (colocation), the weights need not leave the GPU
at all: the rank packs a bucket into device memory (`pack_flat_buckets(..., device="cuda")`) and
sends only a CUDA IPC handle (a few hundred bytes, through Ray); the engine's worker opens the
handle, which maps the very same device memory into its process, and loads from it. This is what
verl and slime do for their colocated (hybrid) engines.

Device matching: Ray gives each actor its own ``CUDA_VISIBLE_DEVICES``, so the same GPU may have
different indices in the two processes. The handle carries the GPU's UUID, and the receiver opens
it on its device with that UUID (an error names both sides' devices if none matches: the engine
is not on the rank's GPU, i.e. not colocated).

Lifetime: the sender waits for the engine's answer before it packs the next bucket, so buckets
do not pile up. It may then drop its reference: torch's CUDA IPC reference counting keeps the
block allocated while the receiver still holds views of it, which vLLM's layerwise reload does for
a layer whose weights are not all in yet (it buffers them until the layer is complete);
``torch.cuda.ipc_collect()`` on the sender returns the released blocks afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlrt_megatron.transport.buckets import TensorMeta

_DEVICE_ARG = 6
"""Position of the device index in the arguments of torch's ``rebuild_cuda_tensor``."""


@dataclass(frozen=True)
class SharedBucket:
    """A flat uint8 GPU bucket exported by CUDA IPC, plus its layout; picklable, small."""

    rebuild: Any
    args: tuple
    device_uuid: str
    nbytes: int
    tensors: tuple[TensorMeta, ...]


def device_uuid(device: torch.device | int | None = None) -> str:
    """The UUID of a CUDA device (stable across processes, unlike its index)."""
    if isinstance(device, int):
        index = device
    else:
        index = torch.device("cuda") if device is None else torch.device(device)
        index = index.index if index.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_properties(index).uuid)


def share_bucket(flat: torch.Tensor, tensors: tuple[TensorMeta, ...]) -> SharedBucket:
    """Export ``flat`` (1-D uint8, on a CUDA device) for another process on the same GPU."""
    from torch.multiprocessing.reductions import reduce_tensor

    if not flat.is_cuda or flat.dtype != torch.uint8 or flat.dim() != 1:
        raise ValueError(
            f"share_bucket needs a 1-D uint8 CUDA tensor, got {flat.dtype} {tuple(flat.shape)} on"
            f" {flat.device}"
        )
    rebuild, args = reduce_tensor(flat)
    return SharedBucket(
        rebuild=rebuild,
        args=tuple(args),
        device_uuid=device_uuid(flat.device),
        nbytes=flat.numel(),
        tensors=tuple(tensors),
    )


def open_bucket(shared: SharedBucket) -> torch.Tensor:
    """Map a `SharedBucket` into this process: the flat uint8 tensor, on the local device that
    has the sender's GPU UUID (no copy). Drop it (and any views) before the sender frees it."""
    local = {device_uuid(i): i for i in range(torch.cuda.device_count())}
    if shared.device_uuid not in local:
        raise RuntimeError(
            f"the weight bucket lives on GPU {shared.device_uuid}, which this process cannot see"
            f" (it sees {sorted(local)}): CUDA IPC needs the engine and the trainer rank on the"
            " same GPU (colocated placement)"
        )
    args = list(shared.args)
    args[_DEVICE_ARG] = local[shared.device_uuid]
    flat = shared.rebuild(*args)
    if flat.numel() != shared.nbytes:
        raise RuntimeError(f"opened a {flat.numel()}-byte bucket, expected {shared.nbytes}")
    return flat
