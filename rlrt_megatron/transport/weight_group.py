"""Broadcast weight transport: one process group from the trainer's packing rank to the engines.

    spec = WeightGroupSpec(name="w1", host=ip, port=port, world_size=1 + engine_workers,
                           backend="gloo")
    group = join_weight_group(spec, rank)             # rank 0: the sender; 1..: engine workers
    broadcast_buckets(group, pack_flat_buckets(named_tensors, bucket_bytes, device=dev), dev)
    for flat, metas in receive_buckets(group, dev): model.load_weights(unpack_flat(flat, metas))

This is the disaggregated transport of verl / NeMo-RL / slime: the weights go from the packing
rank's memory straight into every engine worker's, in buckets, over NCCL on GPUs (GPU to GPU, no
host hop) or gloo on CPU, without the Ray object store. Every worker of a TP>1 engine is a member
and receives every bucket: vLLM's ``load_weights`` then keeps its own shard, as with the
object-store transport.

**Network exposure.** Rank 0's store listens on ``spec.host`` only (a socket bound to that
address is handed to the ``TCPStore``; torch's own would listen on every interface), and every
member proves it holds the group's per-group random ``secret`` before the group is formed: rank 0
publishes a nonce, each member answers with HMAC-SHA256(secret, name|rank|nonce), and rank 0
forms the group only if every answer checks out (otherwise all members raise
`WeightGroupAuthError`). The secret travels inside the spec, i.e. through Ray (whose own token
authentication guards that channel). What this does not give: confidentiality of the store's
key-value traffic, or protection from a host that can already reach the store and races the
members (it can make the join fail, not pass); the store is open only while the group forms.

The group is built directly from a ``TCPStore`` (hosted by rank 0) and a ``ProcessGroupGloo`` /
``ProcessGroupNCCL`` object, *not* through ``torch.distributed.init_process_group``: both sides
already have a default world of their own (Megatron's on the trainer, vLLM's in each worker),
and a process may hold only one default group.

Wire protocol, all collectives rooted at rank 0 so that receivers need no size in advance:
per bucket a 3-element int64 header ``[1, payload bytes, layout bytes]``, then the layout (the
`TensorMeta`s as UTF-8 JSON in a uint8 tensor), then the payload; a header ``[0, 0, 0]`` ends
the stream and ``[-1, 0, 0]`` aborts it (the sender hit an error; receivers raise
`WeightGroupAborted`, leaving the engine to be restarted as after any failed update).
"""

from __future__ import annotations

import datetime
import json
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rlrt_megatron.store_auth import (
    StoreAuthError,
    bound_store,
    listen_on,
    new_secret,
    prove_membership,
)
from rlrt_megatron.transport.buckets import TensorMeta

Backend = Literal["gloo", "nccl"]

_BUCKET, _END, _ABORT = 1, 0, -1


class WeightGroupAborted(RuntimeError):
    """The sender aborted a broadcast stream (its error is raised on the sender's side)."""


class WeightGroupAuthError(StoreAuthError):
    """A member could not prove it holds the group's secret: the group is not formed."""


def _new_secret() -> str:
    return new_secret()


@dataclass(frozen=True)
class WeightGroupSpec:
    """Where and how to form one weight group: rank 0 hosts the store at ``host:port``."""

    name: str
    host: str
    port: int
    world_size: int
    backend: Backend = "gloo"
    timeout_s: float = 600.0
    secret: str = field(default_factory=_new_secret, repr=False)
    """Per-group shared secret every member proves on joining (fresh for each spec)."""

    def __post_init__(self) -> None:
        if self.backend not in ("gloo", "nccl"):
            raise ValueError(f"weight group backend must be 'gloo' or 'nccl', not {self.backend!r}")
        if self.world_size < 2:
            raise ValueError(f"a weight group needs a sender and a receiver, got {self.world_size}")


@dataclass
class WeightGroup:
    """A formed weight group as one member sees it."""

    spec: WeightGroupSpec
    rank: int
    process_group: Any = field(repr=False)
    store: Any = field(repr=False)  # kept alive as long as the group

    def broadcast(self, tensor: torch.Tensor) -> None:
        """In-place broadcast of ``tensor`` from rank 0 to every member."""
        self.process_group.broadcast(tensor, 0).wait()


def join_weight_group(spec: WeightGroupSpec, rank: int) -> WeightGroup:
    """Form the group (blocks until all ``spec.world_size`` members have joined). On NCCL the
    caller's current CUDA device is the one the group uses."""
    import torch.distributed as dist

    if not 0 <= rank < spec.world_size:
        raise ValueError(f"rank {rank} is outside the weight group of {spec.world_size}")
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    store = bound_store(spec.host, spec.port, spec.world_size, rank, timeout)
    store = dist.PrefixStore(f"rlrt/{spec.name}/", store)
    authenticate_members(store, spec, rank)
    group = make_process_group(spec.backend, store, rank, spec.world_size, timeout)
    return WeightGroup(spec=spec, rank=rank, process_group=group, store=store)


_listen_on = listen_on  # the name this module used before store_auth existed


def authenticate_members(store: Any, spec: WeightGroupSpec, rank: int) -> None:
    """Rank 0 checks that every member knows ``spec.secret`` (see the module docstring); raises
    `WeightGroupAuthError` on every member when one does not."""
    prove_membership(
        store,
        name=f"weight group {spec.name}",
        secret=spec.secret,
        rank=rank,
        world_size=spec.world_size,
        error=WeightGroupAuthError,
    )


def make_process_group(
    backend: Backend, store: Any, rank: int, world_size: int, timeout: datetime.timedelta
) -> Any:
    """A standalone gloo or NCCL process-group object over ``store`` (no default group)."""
    import torch.distributed as dist

    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world_size, options)


def _broadcast(group: WeightGroup, tensor: torch.Tensor) -> None:
    group.broadcast(tensor)


def broadcast_buckets(
    group: WeightGroup,
    buckets: Iterable[tuple[torch.Tensor, tuple[TensorMeta, ...]]],
    device: torch.device | str = "cpu",
) -> tuple[int, int, int]:
    """Send every (flat uint8 tensor, metas) bucket to the group's other members (rank 0 only).

    Returns (buckets, tensors, bytes) sent. If ``buckets`` raises, the receivers get an abort
    marker before the error propagates, so none of them waits forever.
    """
    device = torch.device(device)
    sent = [0, 0, 0]
    try:
        for flat, metas in buckets:
            layout = _encode_layout(metas, device)
            header = torch.tensor(
                [_BUCKET, flat.numel(), layout.numel()], dtype=torch.int64, device=device
            )
            _broadcast(group, header)
            _broadcast(group, layout)
            _broadcast(group, flat)
            sent[0] += 1
            sent[1] += len(metas)
            sent[2] += flat.numel()
    except BaseException:
        _broadcast(group, torch.tensor([_ABORT, 0, 0], dtype=torch.int64, device=device))
        raise
    _broadcast(group, torch.tensor([_END, 0, 0], dtype=torch.int64, device=device))
    return sent[0], sent[1], sent[2]


def receive_buckets(
    group: WeightGroup, device: torch.device | str = "cpu"
) -> Iterator[tuple[torch.Tensor, tuple[TensorMeta, ...]]]:
    """Yield each bucket rank 0 broadcasts, as (flat uint8 tensor on ``device``, metas), until
    the end marker; raise `WeightGroupAborted` on the abort marker. Each bucket's buffer is new
    (the caller may keep views of it)."""
    device = torch.device(device)
    while True:
        header = torch.empty(3, dtype=torch.int64, device=device)
        _broadcast(group, header)
        kind, payload_bytes, layout_bytes = (int(v) for v in header.tolist())
        if kind == _END:
            return
        if kind == _ABORT:
            raise WeightGroupAborted("the sender aborted the weight broadcast")
        if kind != _BUCKET:
            raise WeightGroupAborted(f"unknown weight broadcast header {header.tolist()}")
        layout = torch.empty(layout_bytes, dtype=torch.uint8, device=device)
        _broadcast(group, layout)
        flat = torch.empty(payload_bytes, dtype=torch.uint8, device=device)
        _broadcast(group, flat)
        yield flat, _decode_layout(layout)


def _encode_layout(metas: tuple[TensorMeta, ...], device: torch.device) -> torch.Tensor:
    rows = [[m.name, m.dtype, list(m.shape), m.offset, m.nbytes] for m in metas]
    data = json.dumps(rows, separators=(",", ":")).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def _decode_layout(layout: torch.Tensor) -> tuple[TensorMeta, ...]:
    rows = json.loads(bytes(layout.cpu().numpy()).decode())
    return tuple(
        TensorMeta(name=name, dtype=dtype, shape=tuple(shape), offset=offset, nbytes=nbytes)
        for name, dtype, shape, offset, nbytes in rows
    )


def free_port() -> int:
    """A free TCP port on this host (the sender's store listens on it)."""

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]
