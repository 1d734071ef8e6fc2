"""A pool of grader processes with a hard per-item time limit.

Model output is untrusted: a pathological answer (``\\boxed{9^{9^{9^{9}}}}``) can send sympy into
minutes of big-integer arithmetic or unbounded memory. Grading therefore runs in separate worker
processes, one item at a time per worker. A worker that has not answered within ``timeout_s`` is
killed (SIGKILL: C-level arithmetic cannot be interrupted by signals handled in Python) and
replaced; that item scores 0 with status ``timeout``. Workers also run under an address-space
limit so that a memory blow-up ends in a ``MemoryError`` (status ``error``) instead of the host's
OOM killer.

Workers are started with ``spawn`` (forking a trainer that holds CUDA contexts, Ray's gRPC
threads or OpenMP pools is unsafe) once, when the pool is created, and are reused across steps.
Scripts that create a pool need the usual ``if __name__ == "__main__":`` guard.

    with RewardPool("math", num_workers=2, timeout_s=10.0) as pool:
        batch = pool.grade(responses, ground_truths)
        batch.scores, batch.stats["timeout_rate"]
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import signal
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlrt_megatron.rewards.math_verifier import CORRECT, ERROR, NO_ANSWER, TIMEOUT
from rlrt_megatron.rewards.registry import RewardFn, get_reward

# Graded once by each new worker before it reports ready: imports math-verify/sympy up front so
# that this cost never counts against the first real item's time limit. A grader whose ground
# truths have another format gives its own item as a ``warmup_item`` attribute.
_WARMUP = ("The answer is \\boxed{1}.", "1")


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """How the trainer grades rollouts."""

    name: str = "math"
    """The registered reward function (`rlrt_megatron.rewards.reward_names`)."""
    num_workers: int = 2
    """Grader processes; each grades one item at a time."""
    timeout_s: float = 10.0
    """Per-item wall-clock limit; a worker past it is killed and the item scores 0 (timeout)."""
    memory_limit_mb: int | None = 4096
    """Address-space limit of each worker (RLIMIT_AS); None leaves it unlimited."""
    start_method: str = "spawn"
    """multiprocessing start method for the workers."""
    startup_timeout_s: float = 120.0
    """How long a new worker may take to import its grader and report ready."""


@dataclass
class RewardBatch:
    """Per-item rewards of one `RewardPool.grade` call, in input order."""

    scores: list[float]
    """One score per response (0.0 or 1.0 for the math rewards)."""
    statuses: list[str]
    """``correct``, ``wrong``, ``no_answer``, ``timeout`` or ``error`` per response."""

    @property
    def stats(self) -> dict[str, float]:
        """Batch means for logging: reward, and the rates of each failure kind."""
        n = len(self.scores)
        denom = max(n, 1)

        def rate(status: str) -> float:
            return sum(s == status for s in self.statuses) / denom

        return {
            "num_items": float(n),
            "reward_mean": sum(self.scores) / denom,
            "correct_rate": rate(CORRECT),
            "no_answer_rate": rate(NO_ANSWER),
            "timeout_rate": rate(TIMEOUT),
            "error_rate": rate(ERROR),
        }


def _worker_main(conn: Any, grade_fn: RewardFn, memory_limit_mb: int | None) -> None:
    # Ctrl-C goes to the whole process group: let the parent decide, it will kill us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb is not None:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    import logging

    # math-verify logs a warning per call when its own (signal-based) timeouts are disabled.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        grade_fn(*getattr(grade_fn, "warmup_item", _WARMUP))
    except BaseException as e:  # report why, then exit: the parent raises with this message
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        item, response, ground_truth = message
        try:
            score, status = grade_fn(response, ground_truth)
            result = (item, float(score), str(status))
        except Exception:  # includes MemoryError from the address-space limit
            result = (item, 0.0, ERROR)
        conn.send(result)


class _Worker:
    def __init__(self, ctx: Any, grade_fn: RewardFn, memory_limit_mb: int | None) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child_conn, grade_fn, memory_limit_mb),
            daemon=True,
            name="rlrt-reward-worker",
        )
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.started_at = time.monotonic()
        self.ready = False
        self.item: int | None = None
        self.deadline = float("inf")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=2)
        self.kill()


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()


class RewardPool:
    """Grader worker processes, created once and reused for every `grade` call.

    ``grader`` is a registered reward name (``"math"``) or a module-level reward function.
    Close it with `close` or use it as a context manager.
    """

    def __init__(
        self,
        grader: str | RewardFn = "math",
        *,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        memory_limit_mb: int | None = 4096,
        start_method: str = "spawn",
        startup_timeout_s: float = 120.0,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers <= 0:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if memory_limit_mb is not None and memory_limit_mb <= 0:
            raise ValueError(f"memory_limit_mb must be positive or None, got {memory_limit_mb}")
        self.grade_fn = get_reward(grader) if isinstance(grader, str) else grader
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self._ctx = mp.get_context(start_method)
        self.num_timeouts = 0
        self.num_restarts = 0
        self._closed = False
        # Started now, become ready in the background while the trainer does other work.
        self._workers = [self._new_worker() for _ in range(num_workers)]
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    @classmethod
    def from_config(cls, config: RewardConfig) -> RewardPool:
        return cls(
            config.name,
            num_workers=config.num_workers,
            timeout_s=config.timeout_s,
            memory_limit_mb=config.memory_limit_mb,
            start_method=config.start_method,
            startup_timeout_s=config.startup_timeout_s,
        )

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self.grade_fn, self.memory_limit_mb)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = self._new_worker()
        self.num_restarts += 1

    @property
    def worker_pids(self) -> list[int | None]:
        """Process ids of the current workers (they change when a worker is replaced)."""
        return [w.process.pid for w in self._workers]

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    def grade(self, responses: Sequence[str], ground_truths: Sequence[str]) -> RewardBatch:
        """Grade ``responses[i]`` against ``ground_truths[i]``; returns results in input order."""
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        if len(responses) != len(ground_truths):
            raise ValueError(
                f"got {len(responses)} responses but {len(ground_truths)} ground truths"
            )
        for name, values in (("responses", responses), ("ground_truths", ground_truths)):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    raise ValueError(f"{name}[{i}] must be a str, got {type(value).__name__}")
        try:
            return self._grade(responses, ground_truths)
        except BaseException:
            # Workers may hold half-finished items: the pool cannot be trusted any more.
            self.close()
            raise

    def _grade(self, responses: Sequence[str], ground_truths: Sequence[str]) -> RewardBatch:
        n = len(responses)
        scores = [0.0] * n
        statuses = [""] * n
        pending = deque(range(n))
        remaining = n
        while remaining:
            for worker in list(self._workers):
                if worker.ready and worker.item is None and pending:
                    item = pending.popleft()
                    try:
                        worker.conn.send((item, responses[item], ground_truths[item]))
                    except (BrokenPipeError, ConnectionResetError):
                        pending.appendleft(item)  # died while idle: retry on its replacement
                        self._replace(worker)
                        continue
                    worker.item = item
                    worker.deadline = time.monotonic() + self.timeout_s
            waiting = [w for w in self._workers if w.item is not None or not w.ready]
            deadlines = [
                w.deadline if w.ready else w.started_at + self.startup_timeout_s for w in waiting
            ]
            wait_s = max(0.0, min(deadlines) - time.monotonic())
            by_conn = {w.conn: w for w in waiting}
            for conn in mp_connection.wait(list(by_conn), timeout=wait_s):
                worker = by_conn[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    if not worker.ready:
                        worker.process.join(timeout=5)
                        raise RuntimeError(
                            "reward worker exited during startup "
                            f"(exit code {worker.process.exitcode})"
                        ) from None
                    # Crashed mid-item (segfault, OOM kill): the item scores 0 as an error.
                    item = worker.item
                    assert item is not None
                    scores[item], statuses[item] = 0.0, ERROR
                    remaining -= 1
                    self._replace(worker)
                    continue
                if not worker.ready:
                    kind, detail = message
                    if kind != "ready":
                        raise RuntimeError(f"reward worker failed to start: {detail}")
                    worker.ready = True
                    continue
                item, score, status = message
                scores[item], statuses[item] = score, status
                worker.item = None
                remaining -= 1
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.item is not None and now >= worker.deadline:
                    scores[worker.item], statuses[worker.item] = 0.0, TIMEOUT
                    remaining -= 1
                    self.num_timeouts += 1
                    self._replace(worker)
                elif not worker.ready and now >= worker.started_at + self.startup_timeout_s:
                    raise RuntimeError(
                        f"reward worker did not start within {self.startup_timeout_s:.0f} s"
                    )
        return RewardBatch(scores=scores, statuses=statuses)
