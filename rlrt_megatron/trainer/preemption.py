"""Graceful stop on Slurm pre-emption: SIGTERM / SIGUSR1 set a flag the loop checks.

Slurm sends SIGTERM (or, with ``--signal=USR1@120``, SIGUSR1 ahead of the deadline) before it
kills a job. The handler only records the request; the loop finishes the current step, writes a
checkpoint and exits with status 0, so `resume=auto` continues from there.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    @property
    def should_stop(self) -> bool:
        return self.received is not None

    def install(self) -> PreemptionHandler:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()
