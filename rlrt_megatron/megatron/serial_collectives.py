"""Run a CPU rank's large gloo collectives with one intra-op thread, so that they start no second
OpenMP team that slows every later matmul of the process.

What was measured (2-core VM, torch 2.13 CPU wheel, libgomp; ad-hoc scripts, not kept): a
[128, 128] x [128, 768] float32 matmul takes ~90 µs with 2 threads. After one
``all_gather_into_tensor`` of >= 100k elements on a gloo group (even a world of one), it takes
~170 µs — the speed of 1 thread — for the rest of the process, and the process makes ~2
voluntary context switches per matmul where it made none, and one more OS thread. Observed: with
``torch.set_num_threads(1)`` around the collective, neither the extra thread nor the slowdown
appears. Inferred, not proven: gloo copies such tensors in its own worker thread with ATen's
parallel copy, which gives that thread an OpenMP team of its own, and with more libgomp threads
than cores the workers sleep between parallel regions instead of spin-waiting (each small op then
pays a wake-up); ``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT`` settings only partly helped, so the
mechanism may be more than that. The trigger in a
trainer rank is megatron's distributed optimizer, which all-gathers the whole parameter buffer
after every optimizer step (`DistributedDataParallel.start_param_sync`); in-rank generation
(many small decode matmuls) ran 0.20 s before the first update and 0.35 s after it.
Keeping the collective single-threaded avoids it (the all-gather's copy is memory-bound anyway).

Depth: this wraps the one large gloo collective a rank runs every step with one DP rank. Others
of >= 100k elements (the DP gradient reduce-scatter with DP > 1, TP gathers of the weight export)
may trigger the same; wrapping torch.distributed itself would be the general fix and is not done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def with_one_intra_op_thread(fn: F) -> F:
    """``fn`` run with ``torch.set_num_threads(1)``, the previous count restored after."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapped  # type: ignore[return-value]


def serialize_param_gathers(chunks: Any) -> None:
    """Wrap each DDP chunk's ``start_param_sync`` (the distributed optimizer's parameter
    all-gather) in `with_one_intra_op_thread`. For gloo (CPU) process groups only: NCCL
    collectives make no host copies."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_backend() != "gloo":
        return
    for chunk in chunks:
        if hasattr(chunk, "start_param_sync"):
            chunk.start_param_sync = with_one_intra_op_thread(chunk.start_param_sync)
