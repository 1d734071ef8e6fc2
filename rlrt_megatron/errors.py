"""User-facing errors: something the user can fix (a setting, an input file, a command-line
option), reported as one line that names it.

This module imports nothing, so any layer may raise these errors (a library module never needs
the CLI for them); `rlrt_megatron.cli.main` prints a `CommandError` as
``rlrt <command>: error: <message>``. Errors of one domain that callers catch by type live with
their domain (e.g. `rlrt_megatron.data.records.DatasetError`).
"""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure: printed as ``rlrt <command>: error: <message>``, exit code 1
    (or ``exit_code``: 2 for a bad setting or input, refused before anything started)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the dotted key (and file)."""
