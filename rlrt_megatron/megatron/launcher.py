"""Start N worker processes for a function with the torch.distributed environment set.

What ``rlrt <command> --tp 2`` uses so that users never call torchrun themselves:

* **Not launched yet** (a plain ``python`` / ``rlrt`` process): :func:`launch` spawns ``nprocs``
  fresh processes (``spawn`` start method: no fork of a process that may hold threads or CUDA
  state) with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (loopback) and
  ``MASTER_PORT`` (a free port) set, and calls ``fn(rank, *args, **kwargs)`` in each. The
  process group itself is started by the function (e.g. through
  :func:`~rlrt_megatron.megatron.parallel.initialize_parallel`, which picks gloo on CPU and
  nccl on GPUs from the same variables).
* **Already launched** (torchrun, or Slurm / a cluster launcher that exported the same
  variables): ``fn`` runs in this process with this process's rank; the world size must equal
  ``nprocs``. Slurm's own variables (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``) are
  translated when ``MASTER_ADDR`` / ``MASTER_PORT`` are exported.

The first failing rank's exception is re-raised in the parent as :class:`WorkerError` with that
rank's traceback; the other ranks are then terminated (they would otherwise wait forever in a
collective). A run past ``timeout_s`` is killed and raises :class:`LaunchTimeout`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from rlrt_megatron.store_auth import SECRET_ENV, new_secret

TORCH_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_POLL_S = 0.2
_TERMINATE_GRACE_S = 5.0


class WorkerError(RuntimeError):
    """A worker raised, or died. ``rank``: the first rank that failed; ``remote_traceback``: its
    formatted traceback (``None`` if it died without one, e.g. killed by a signal)."""

    def __init__(self, rank: int, message: str, remote_traceback: str | None = None):
        self.rank = rank
        self.remote_traceback = remote_traceback
        detail = (
            f"\n\n--- traceback of rank {rank} ---\n{remote_traceback}" if remote_traceback else ""
        )
        super().__init__(f"rank {rank} failed: {message}{detail}")


class LaunchTimeout(TimeoutError):
    """The workers did not all finish within the timeout (they were killed)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (rank 0 binds it shortly after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def external_launch_env() -> dict[str, int] | None:
    """``{"rank", "local_rank", "world_size"}`` if this process was started by a distributed
    launcher (torchrun-style variables, or Slurm's with ``MASTER_ADDR``/``MASTER_PORT`` exported),
    else ``None``."""
    env = os.environ
    if all(v in env for v in TORCH_ENV_VARS):
        rank = int(env["RANK"])
        return {
            "rank": rank,
            "local_rank": int(env.get("LOCAL_RANK", rank)),
            "world_size": int(env["WORLD_SIZE"]),
        }
    slurm = ("SLURM_PROCID", "SLURM_NTASKS")
    if all(v in env for v in slurm) and int(env["SLURM_NTASKS"]) > 1:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in env]
        if missing:
            raise RuntimeError(
                f"running as Slurm task {env['SLURM_PROCID']} of {env['SLURM_NTASKS']} but "
                f"{' and '.join(missing)} not exported: set them in the sbatch script (e.g. "
                "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1))"
            )
        return {
            "rank": int(env["SLURM_PROCID"]),
            "local_rank": int(env.get("SLURM_LOCALID", "0")),
            "world_size": int(env["SLURM_NTASKS"]),
        }
    return None


def launch(
    fn: Callable[..., Any],
    nprocs: int,
    *args: Any,
    timeout_s: float | None = None,
    threads_per_worker: int | None = None,
    **kwargs: Any,
) -> dict[int, Any]:
    """Run ``fn(rank, *args, **kwargs)`` on ``nprocs`` ranks; return ``{rank: return value}``.

    In spawned mode the dict has every rank (return values must be picklable); when already
    launched externally it has this process's rank only.

    Args:
        fn: a module-level (importable, picklable) function; it starts the process group itself.
        nprocs: the world size.
        timeout_s: kill all workers and raise :class:`LaunchTimeout` after this long.
        threads_per_worker: ``torch.set_num_threads`` in each worker (default: the CPU count
            divided by ``nprocs``, at least 1), so CPU ranks do not oversubscribe the cores.
    """
    if not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive integer, got {nprocs!r}")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    external = external_launch_env()
    if external is not None:
        if external["world_size"] != nprocs:
            raise ValueError(
                f"this process was launched as rank {external['rank']} of a world of "
                f"{external['world_size']}, but the command needs {nprocs} processes: launch "
                f"it with {nprocs} tasks (torchrun --nproc-per-node / srun --ntasks), or without "
                "a launcher to let rlrt start them"
            )
        os.environ.setdefault("RANK", str(external["rank"]))
        os.environ.setdefault("LOCAL_RANK", str(external["local_rank"]))
        os.environ.setdefault("WORLD_SIZE", str(external["world_size"]))
        return {external["rank"]: fn(external["rank"], *args, **kwargs)}
    _check_devices(nprocs)
    try:
        pickle.dumps(fn)
    except Exception as error:
        raise TypeError(
            f"{fn!r} cannot be sent to spawned workers ({error}): pass a module-level function"
        ) from error
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // nprocs)
    return _spawn(fn, nprocs, args, kwargs, timeout_s, threads)


def _check_devices(nprocs: int) -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < nprocs:
        raise ValueError(
            f"{nprocs} processes need {nprocs} GPUs (one each) but {torch.cuda.device_count()} "
            "are visible: lower the layout (TP*PP*DP) or set CUDA_VISIBLE_DEVICES"
        )


def _worker(
    rank: int,
    nprocs: int,
    port: int,
    threads: int,
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    results: Any,
    secret: str = "",
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if secret:  # the ranks' rendezvous admits only this launch's processes (store_auth)
        os.environ[SECRET_ENV] = secret
    try:
        import torch

        torch.set_num_threads(threads)
        value = fn(rank, *args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - report everything, incl. SystemExit
        results.put((rank, "error", f"{type(error).__name__}: {error}", traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)
    try:
        # Pickled here: a queue pickles in a background thread and would drop the error.
        payload = pickle.dumps(value)
    except Exception as error:
        results.put((rank, "error", f"its return value cannot be pickled: {error}", None))
    else:
        results.put((rank, "ok", payload, None))
    results.close()
    results.join_thread()


def _spawn(
    fn: Callable[..., Any],
    nprocs: int,
    args: tuple,
    kwargs: dict,
    timeout_s: float | None,
    threads: int,
) -> dict[int, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    secret = new_secret()
    processes = [
        ctx.Process(
            target=_worker,
            args=(rank, nprocs, port, threads, fn, args, kwargs, results, secret),
            name=f"rlrt-rank{rank}",
            daemon=False,
        )
        for rank in range(nprocs)
    ]
    for process in processes:
        process.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    values: dict[int, Any] = {}
    exited_without_report: dict[int, float] = {}
    try:
        while len(values) < nprocs:
            try:
                rank, status, payload, remote_tb = results.get(timeout=_POLL_S)
            except queue.Empty:
                pass
            else:
                if status == "error":
                    raise WorkerError(rank, payload, remote_tb)
                # Trust boundary: the payload is the return value of `fn` pickled by a worker
                # process this function spawned moments ago (same code, same user), passed
                # through its own multiprocessing queue, which unpickles too. Nothing read from
                # a file or a peer outside this process tree reaches this call.
                values[rank] = pickle.loads(payload)
                continue
            now = time.monotonic()
            for rank, process in enumerate(processes):
                if rank in values or process.exitcode is None:
                    continue
                # A worker that exited may still have its report in flight: wait a moment.
                first_seen = exited_without_report.setdefault(rank, now)
                if now - first_seen > 2.0:
                    raise WorkerError(
                        rank, f"process exited with code {process.exitcode} without a result"
                    )
            if deadline is not None and now > deadline:
                running = [r for r in range(nprocs) if r not in values]
                raise LaunchTimeout(
                    f"{fn.__name__} on {nprocs} processes exceeded {timeout_s:.0f} s; ranks "
                    f"still running: {running}"
                )
        for process in processes:  # all reported: let them exit (stragglers are stopped below)
            process.join(timeout=_TERMINATE_GRACE_S)
        return values
    finally:
        _stop(processes)
        results.close()


def _stop(processes: list[Any]) -> None:
    """Terminate any worker still running (SIGTERM, then SIGKILL after a grace period)."""
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
