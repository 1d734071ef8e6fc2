"""Where the Ray actors' output goes: one file per actor under ``<run_dir>/logs/``.

A run's console is meant for a person: the progress bar and a few lines per phase. The engines
(vLLM's INFO lines, its engine core's start-up) and the trainer ranks (megatron-core, torch
distributed) print far more, so during `rlrt train` / `rlrt quickstart` the driver opens a scope
with :func:`actor_logs` and every actor spawned inside it (`EnginePool`'s engines, `WorkerGroup`'s
ranks) is given a file (:func:`actor_log_file`). The actor's constructor calls
:func:`redirect_output` first thing: it points the process's stdout and stderr *file descriptors*
at the file, so Python logging, ``warnings``, C/C++ output and the subprocesses the actor starts
(vLLM's engine core) all land there. Outside a scope (``--verbose``, other commands, tests that
build pools directly) nothing is redirected and Ray forwards the actors' output to the console.

Standard library only: the driver and the actors import it before anything heavy.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGS_SUBDIR = "logs"
"""The folder of a run's actor logs, inside the run folder."""

_folder: Path | None = None  # the driver's current scope (None: no redirection)


@contextmanager
def actor_logs(folder: str | Path | None) -> Iterator[Path | None]:
    """Actors spawned inside this scope write their output to files in ``folder`` (created);
    ``None`` leaves their output to Ray (the console). Scopes nest; the previous one comes back
    on exit."""
    global _folder
    previous = _folder
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
    _folder = folder
    try:
        yield folder
    finally:
        _folder = previous


def actor_log_file(name: str) -> str | None:
    """The log file of the actor ``name`` (e.g. ``engine_0``, ``rank_1``) in the current scope,
    or ``None`` outside one. Called in the driver, when the actor is spawned."""
    return None if _folder is None else str(_folder / f"{name}.log")


def redirect_output(path: str | None) -> None:
    """In an actor: append this process's stdout and stderr (file descriptors 1 and 2) to
    ``path``; ``None`` does nothing. A replaced actor (an engine restarted after a failure)
    appends to the same file, after a header line naming the process."""
    if path is None:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a line at a time: a crash loses nothing printed
            stream.reconfigure(line_buffering=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"==== {Path(path).stem}: pid {os.getpid()}, started {stamp} ====", flush=True)
