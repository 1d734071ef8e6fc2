"""Run a function on N local gloo ranks, from a test.

``run_distributed(fn, world_size, *args)`` spawns ``world_size`` fresh processes (``spawn`` start
method: no fork of the pytest process), sets the ``env://`` variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` on a free port) and
calls ``fn(rank, *args)`` in each. ``fn`` must be importable (a module-level function). An
exception on any rank fails the call with that rank's traceback; a run longer than ``timeout_s``
is killed. Ranks exchange results through files (e.g. under a ``tmp_path`` passed in ``args``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, threads: int, args: tuple
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch

    torch.set_num_threads(threads)  # the ranks share the machine's cores
    fn(rank, *args)


def run_distributed(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 600.0
) -> None:
    """Run ``fn(rank, *args)`` on ``world_size`` spawned processes; raise if any rank fails."""
    threads = max(1, (os.cpu_count() or 1) // world_size)
    context = mp.start_processes(
        _entry,
        args=(fn, world_size, free_port(), threads, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):  # raises ProcessRaisedException on a rank's error
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed run of {fn.__name__} exceeded {timeout_s:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
