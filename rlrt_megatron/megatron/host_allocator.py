"""How a rank's process gets host memory from glibc: keep freed memory for the next step.

On a CPU rank the update's activations live in host memory. A micro-batch of the medium
benchmark workload (16,384 tokens, hidden 512, SwiGLU 1536) makes tensors of 33-200 MB per
layer; glibc serves every allocation above its mmap threshold (which stops adapting at 32 MB)
with a fresh ``mmap`` and unmaps it on ``free``, so each step the kernel faults in and zeroes
those pages again. Measured on that update (one rank, 2 threads, an ad-hoc alternation of
processes): about 1 M minor page faults and 3.5-4.5 s of kernel CPU time per update with glibc's
defaults; 25-90 k faults and 1.8-2.9 s with mmap and trimming off (``retain``), the same user
time. In `benchmarks/vs_trl.py`'s medium job, side by side: update 21.6 s against 23.1 s
(README, Performance).

``retain`` sets, process-wide (``mallopt``): ``M_MMAP_MAX = 0`` (serve large blocks from the
heap as well) and ``M_TRIM_THRESHOLD = SIZE_MAX`` (never hand the heap's free top back). The
process keeps its peak footprint (what a training rank reaches every step anyway) and reuses
it without faults, which is what the ``LD_PRELOAD``-ed tcmalloc/jemalloc that CPU inference
stacks recommend aim at, without a library to install (Ray's bundled jemalloc 5.3 with its
default decay faulted more here, 3.6 M per update). glibc still maps a block that a thread's own
arena cannot grow to; megatron's forward and backward run on the rank's main thread (Ray runs a
synchronous actor's calls there), whose arena is the heap.

``auto`` is ``retain`` on CPU ranks and ``system`` (glibc untouched) where CUDA is present:
there activations are device memory, and a host process that never returns its heap could
hold a checkpoint load's or a weight sync's peak for the rest of the run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import typing
from typing import Literal

HostAllocator = Literal["auto", "retain", "system"]
HOST_ALLOCATORS: tuple[str, ...] = typing.get_args(HostAllocator)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_NEVER = -1  # mallopt takes an int; glibc widens it to size_t: -1 is SIZE_MAX (never trim)


def resolve_host_allocator(mode: HostAllocator, *, cuda: bool) -> Literal["retain", "system"]:
    """``auto`` → ``retain`` without CUDA, ``system`` with it; other modes as given."""
    if mode not in HOST_ALLOCATORS:
        raise ValueError(f"host_allocator must be one of {HOST_ALLOCATORS}, not {mode!r}")
    if mode == "auto":
        return "system" if cuda else "retain"
    return mode


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (``mallopt`` and its parameters are glibc's)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def retain_freed_host_memory() -> bool:
    """Apply ``retain`` to this process (see the module docstring). Returns False, changing
    nothing, where the C library is not glibc or refuses a parameter."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _NEVER))


def apply_host_allocator(mode: HostAllocator, *, cuda: bool) -> bool:
    """Set this process's allocator behaviour for ``mode``; True when ``retain`` took effect."""
    if resolve_host_allocator(mode, cuda=cuda) == "system":
        return False
    return retain_freed_host_memory()
