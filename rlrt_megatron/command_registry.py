"""The registry of ``rlrt`` commands, which `rlrt_megatron.cli` builds its parser from.

A command module (one of ``cli._COMMAND_MODULES``, imported by the CLI on first use) calls
`register_command` when it is imported. It depends on this module, not on the CLI: nothing in
the library imports ``cli.py``, which stays the top of the package's layers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}
"""Every registered command by name, in registration order (the order of ``rlrt --help``)."""


def register_command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add ``rlrt <name>``. ``run`` returns the process exit code; it may raise
    `rlrt_megatron.errors.CommandError` for a clean one-line error."""
    if name in COMMANDS:
        raise ValueError(f"command {name!r} is already registered")
    COMMANDS[name] = Command(name, help, add_arguments, run)
