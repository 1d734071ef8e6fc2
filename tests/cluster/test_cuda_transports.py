"""The GPU weight transports' device halves, on one GPU (no Ray or vLLM needed).

- CUDA IPC (colocated): a bucket packed in GPU memory by one process is opened by another
  through its IPC handle, matched by GPU UUID; the tensors are bit-exact and the memory is truly
  shared (a byte the receiver writes is seen by the sender).
- Packing into device memory equals packing on the host, byte for byte.
- The broadcast protocol carrying CUDA buckets (over gloo: NCCL refuses two ranks on one GPU), and
  the NCCL process-group object the broadcast transport builds, as a one-member group (its
  construction and broadcast call; a real sender/receiver pair over NCCL needs two GPUs).
"""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
from _transport_workers import ipc_receiver, sample_weights

from rlrt_megatron.transport.buckets import pack_flat_buckets, unpack_flat

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_packing_on_the_gpu_matches_the_host():
    host = list(pack_flat_buckets(sample_weights(), 256, device="cpu"))
    cuda = [(n, t.cuda()) for n, t in sample_weights()]
    device = list(pack_flat_buckets(cuda, 256, device="cuda"))
    assert [m for _, m in host] == [m for _, m in device]
    for (h, metas), (d, _) in zip(host, device, strict=True):
        assert d.is_cuda and d.numel() == h.numel()
        for (name, a), (_, b) in zip(unpack_flat(h, metas), unpack_flat(d, metas), strict=True):
            assert torch.equal(a, b.cpu()), name  # padding between tensors is left unwritten


def test_cuda_ipc_bucket_is_shared_with_another_process():
    from rlrt_megatron.transport.cuda_ipc import share_bucket

    ctx = mp.get_context("spawn")
    to_receiver, from_receiver = ctx.Queue(), ctx.Queue()
    receiver = ctx.Process(target=ipc_receiver, args=(to_receiver, from_receiver))
    receiver.start()
    try:
        cuda = [(n, t.cuda()) for n, t in sample_weights()]
        for flat, metas in pack_flat_buckets(cuda, 512, device="cuda"):
            torch.cuda.synchronize()
            to_receiver.put(share_bucket(flat, metas))
            ok, count = from_receiver.get(timeout=120)
            assert ok and count == len(metas)
            assert int(flat[-1]) == 0xAB  # written by the receiver into the same memory
        to_receiver.put(None)
        receiver.join(timeout=60)
        assert receiver.exitcode == 0
    finally:
        if receiver.is_alive():
            receiver.kill()


def test_share_bucket_refuses_host_memory():
    from rlrt_megatron.transport.cuda_ipc import share_bucket

    with pytest.raises(ValueError, match="CUDA tensor"):
        share_bucket(torch.zeros(8, dtype=torch.uint8), ())


def test_broadcast_protocol_carries_cuda_buckets():
    from test_weight_group import _run_group

    results = _run_group(bucket_bytes=512, device="cuda", world=2)
    assert results[0][0] == "sent" and results[1] == ("received", True, 6)


def test_nccl_weight_group_object_constructs_and_broadcasts():
    import datetime

    import torch.distributed as dist

    from rlrt_megatron.transport.weight_group import free_port, make_process_group

    timeout = datetime.timedelta(seconds=60)
    store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True, timeout=timeout)
    torch.cuda.set_device(0)
    group = make_process_group("nccl", dist.PrefixStore("t/", store), 0, 1, timeout)
    tensor = torch.arange(16, dtype=torch.uint8, device="cuda")
    group.broadcast(tensor, 0).wait()
    assert torch.equal(tensor.cpu(), torch.arange(16, dtype=torch.uint8))
    group.shutdown()
