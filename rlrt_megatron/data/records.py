"""The prompt record every reader produces, and the row validation they share.

A record is one RL question: the prompt as chat messages, the reference answer the reward compares
against, an optional worked solution (RLSD's teacher context, SFT warm-up targets), where it came
from, and its position in the source file. Readers validate each row and raise `DatasetError`
naming the file, the row and the key that was wrong, or — when the caller asks for it — skip the
row and count it in `ReadStats`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROLES = ("system", "user", "assistant")
OnBadRow = Literal["raise", "skip"]
_MAX_KEPT_ERRORS = 20


class DatasetError(ValueError):
    """A malformed dataset row or file; the message names the file, the row and the key."""


class RowError(ValueError):
    """A malformed field inside one row: ``key`` names the field, the reader adds file and row."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"key {key!r}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class PromptRecord:
    """One question of an RL dataset."""

    prompt: list[dict[str, str]]
    """Chat messages ``[{"role": ..., "content": ...}, ...]``, rendered later by a chat template."""
    ground_truth: str
    """The reference final answer the reward compares with (``"34"``, ``"\\frac{1}{2}"``)."""
    solution: str | None = None
    """A worked solution ending in the answer, when the dataset has one (RLSD teacher context)."""
    data_source: str = ""
    """Dataset name (verl's ``data_source`` column, or the jsonl file's stem)."""
    index: int = 0
    """0-based row position in the source file: a stable id for grouping rollouts and logging."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Everything else the row carried (verl ``extra_info``, unknown jsonl keys)."""

    @property
    def question(self) -> str:
        """The text of the last user message: the question itself, for teacher templates."""
        for message in reversed(self.prompt):
            if message["role"] == "user":
                return message["content"]
        raise ValueError(f"record {self.index} has no user message")


@dataclass
class ReadStats:
    """What a reader saw: rows read, rows kept, rows skipped as malformed (with their errors)."""

    path: str
    num_rows: int = 0
    num_kept: int = 0
    num_bad: int = 0
    errors: list[str] = field(default_factory=list)
    """The first few skipped rows' error messages (at most 20), for the log."""

    def record_bad(self, message: str) -> None:
        self.num_bad += 1
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(message)


def check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in typing.get_args(OnBadRow):
        raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}")


def row_error_message(path: str | Path, where: str, error: RowError) -> str:
    return f"{path}: {where}: {error}"


def validate_messages(value: object, key: str = "prompt") -> list[dict[str, str]]:
    """A prompt as a clean list of ``{"role", "content"}`` dicts; a plain string is one user turn.

    Raises `RowError` naming the offending key (``prompt``, ``prompt[2].role``, ...).
    """
    if isinstance(value, str):
        if not value.strip():
            raise RowError(key, "is empty")
        return [{"role": "user", "content": value}]
    if value is None:
        raise RowError(key, "is missing")
    # pyarrow hands list columns back as Python lists; numpy arrays would come from pandas.
    if not isinstance(value, list | tuple):
        raise RowError(key, f"must be a string or a list of messages, got {type(value).__name__}")
    if len(value) == 0:
        raise RowError(key, "is an empty list of messages")
    messages = []
    for i, message in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise RowError(
                where, f"must be a dict with role and content, got {type(message).__name__}"
            )
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            raise RowError(f"{where}.role", f"must be a string, got {type(role).__name__}")
        if role not in ROLES:
            raise RowError(f"{where}.role", f"must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise RowError(f"{where}.content", f"must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise RowError(key, "has no non-empty user message")
    return messages


def validate_answer(value: object, key: str) -> str:
    """A reference answer as a non-empty string; integers are accepted (``42`` → ``"42"``)."""
    if value is None:
        raise RowError(key, "is missing")
    # bool is an int subclass; True as an answer is a data bug, not the number 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RowError(key, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(key, "is empty")
    return value.strip()


def validate_optional_text(value: object, key: str) -> str | None:
    """An optional text field: None stays None, anything else must be a non-empty string."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(key, f"must be a string or null, got {type(value).__name__}")
    if not value.strip():
        raise RowError(key, "is empty (omit it or set it to null)")
    return value
