"""The broadcast weight transport's wire protocol over a real gloo group of three processes.

Rank 0 packs mixed-dtype tensors into several buckets and broadcasts them; ranks 1 and 2 (the
stand-ins for two engine workers) must get every tensor bit-exact, in order. When the sender's
stream fails part-way, the receivers must be told (abort marker) rather than wait forever, and the
sender must raise its own error. The same protocol carries CUDA tensors over NCCL on GPUs; the
engine-side use of it runs with real vLLM engines in test_policy_colocated.py.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest
from _transport_workers import broadcast_member

from rlrt_megatron.transport.weight_group import WeightGroupSpec, free_port

pytestmark = pytest.mark.distributed


def _run_group(bucket_bytes: int, fail_at: int = -1, device: str = "cpu", world: int = 3):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    spec = WeightGroupSpec(
        name="test", host="127.0.0.1", port=free_port(), world_size=world, timeout_s=60
    )
    procs = [
        ctx.Process(target=broadcast_member, args=(r, spec, bucket_bytes, device, fail_at, queue))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return results


def test_every_receiver_gets_every_tensor_bit_exact():
    results = _run_group(bucket_bytes=512)
    kind, (buckets, tensors, nbytes) = results[0]
    assert kind == "sent" and tensors == 6 and buckets >= 3 and nbytes > 0
    assert results[1] == ("received", True, 6)
    assert results[2] == ("received", True, 6)


def test_a_failing_sender_aborts_the_receivers():
    results = _run_group(bucket_bytes=0, fail_at=3)  # one tensor per bucket: 3 sent, then error
    assert results[0] == ("raised", "bad tensor")
    assert results[1][0] == "aborted" and results[2][0] == "aborted"


def test_spec_is_checked():
    with pytest.raises(ValueError, match="backend"):
        WeightGroupSpec(name="x", host="h", port=1, world_size=2, backend="mpi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sender and a receiver"):
        WeightGroupSpec(name="x", host="h", port=1, world_size=1)


def _join_all(specs: list[WeightGroupSpec]) -> list:
    """Join rank r with ``specs[r]`` in threads (the store and gloo work across threads);
    each result is the formed group or the exception raised."""
    import threading

    from rlrt_megatron.transport.weight_group import join_weight_group

    results: list = [None] * len(specs)

    def member(rank: int) -> None:
        try:
            results[rank] = join_weight_group(specs[rank], rank)
        except Exception as error:  # recorded for the assertions
            results[rank] = error

    threads = [threading.Thread(target=member, args=(r,)) for r in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_the_store_refuses_a_member_without_the_secret():
    import dataclasses

    from rlrt_megatron.transport.weight_group import WeightGroup, WeightGroupAuthError

    spec = WeightGroupSpec(name="auth", host="127.0.0.1", port=free_port(), world_size=3)
    impostor = dataclasses.replace(spec, secret="not-the-secret")
    results = _join_all([spec, spec, impostor])
    assert all(isinstance(r, WeightGroupAuthError) for r in results), results
    assert "member(s) [2] did not prove the group's secret" in str(results[0])
    # The same members with the secret form the group.
    spec = dataclasses.replace(spec, port=free_port())
    assert all(isinstance(r, WeightGroup) for r in _join_all([spec, spec, spec]))


def test_specs_get_distinct_secrets_kept_out_of_their_repr():
    a = WeightGroupSpec(name="x", host="h", port=1, world_size=2)
    b = WeightGroupSpec(name="x", host="h", port=1, world_size=2)
    assert a.secret != b.secret and len(a.secret) == 64
    assert a.secret not in repr(a)


def test_the_store_listens_only_on_the_address_it_was_given():
    """Bound to loopback, it cannot be reached through this machine's other addresses."""
    import socket
    import subprocess

    from rlrt_megatron.transport.weight_group import WeightGroup

    listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    others = [a for a in listed if "." in a and not a.startswith("127.")]
    if not others:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    spec = WeightGroupSpec(name="bind", host="127.0.0.1", port=free_port(), world_size=2)
    groups = _join_all([spec, spec])
    assert all(isinstance(g, WeightGroup) for g in groups), groups
    socket.create_connection(("127.0.0.1", spec.port), timeout=2).close()  # listening there
    with pytest.raises(OSError):
        socket.create_connection((others[0], spec.port), timeout=2).close()
