"""Process bodies for test_weight_group.py and test_cuda_transports.py (spawned processes import
them by name, so they live in a module of their own, not in the test files)."""

from __future__ import annotations

import torch

from rlrt_megatron.transport.buckets import pack_flat_buckets, unpack_flat
from rlrt_megatron.transport.weight_group import (
    WeightGroupAborted,
    broadcast_buckets,
    join_weight_group,
    receive_buckets,
)


def sample_weights() -> list[tuple[str, torch.Tensor]]:
    """Mixed dtypes and shapes, including a scalar and a tensor larger than the test buckets."""
    g = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(7, 5, generator=g)),
        ("b.weight", torch.randn(3, 11, generator=g).to(torch.bfloat16)),
        ("c.bias", torch.randn(13, generator=g).to(torch.float16)),
        ("d.count", torch.tensor(42, dtype=torch.int64)),
        ("e.big", torch.randn(40, 9, generator=g)),
        ("f.mask", torch.rand(6, generator=g) > 0.5),
    ]


def broadcast_member(rank: int, spec, bucket_bytes: int, device: str, fail_at: int, queue) -> None:
    """Rank 0 broadcasts `sample_weights` (raising before the ``fail_at``-th tensor if >= 0);
    the others receive. Each puts (rank, outcome) on ``queue``."""
    if device == "cuda":
        torch.cuda.set_device(0)
    group = join_weight_group(spec, rank)
    try:
        if rank == 0:

            def stream():
                for i, (name, tensor) in enumerate(sample_weights()):
                    if i == fail_at:
                        raise ValueError("bad tensor")
                    yield name, tensor.to(device)

            sent = broadcast_buckets(
                group, pack_flat_buckets(stream(), bucket_bytes, device=device), device
            )
            queue.put((rank, ("sent", sent)))
        else:
            got = []
            for flat, metas in receive_buckets(group, device):
                assert flat.device.type == device
                got.extend((n, t.cpu().clone()) for n, t in unpack_flat(flat, metas))
            expected = sample_weights()
            same = [n for n, _ in got] == [n for n, _ in expected] and all(
                a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
                for (_, a), (_, b) in zip(got, expected, strict=True)
            )
            queue.put((rank, ("received", same, len(got))))
    except WeightGroupAborted as e:
        queue.put((rank, ("aborted", str(e))))
    except ValueError as e:
        queue.put((rank, ("raised", str(e))))


def ipc_receiver(queue_in, queue_out) -> None:
    """Open each shared bucket, check it against `sample_weights`, answer, until None."""
    from rlrt_megatron.transport.cuda_ipc import open_bucket

    torch.cuda.set_device(0)
    expected = dict(sample_weights())
    while (shared := queue_in.get()) is not None:
        flat = open_bucket(shared)
        ok = flat.is_cuda and all(
            torch.equal(t.cpu(), expected[name]) for name, t in unpack_flat(flat, shared.tensors)
        )
        # Write through the mapping: the sender sees it if the memory is truly shared.
        flat[-1] = 0xAB
        torch.cuda.synchronize()
        del flat
        queue_out.put((ok, len(shared.tensors)))
