"""Readers for prompt datasets: verl-style parquet (as DAPO-Math-17k is distributed) and jsonl.

verl parquet schema (one row per question)::

    prompt        list<struct<role: string, content: string>>   the chat messages
    reward_model  struct<ground_truth: string, style: string>     the reference answer
    data_source   string                                          optional, e.g. "math_dapo"
    extra_info    struct<...>                                     optional; ``solution`` if present
                                                                  becomes `PromptRecord.solution`

jsonl (one JSON object per line)::

    {"prompt": "What is 3+4?", "answer": "7", "solution": "3+4 = 7. \\boxed{7}"}

``prompt`` may also be a list of chat messages; ``solution`` and ``data_source`` are optional;
any other key is kept in `PromptRecord.extra`. Blank lines are ignored.

Both readers return ``(records, stats)``. With ``on_bad_row="raise"`` (the default) the first
malformed row raises `DatasetError` naming the file, the row (1-based line for jsonl, 0-based row
index for parquet) and the key; with ``"skip"`` malformed rows are dropped and counted in
`ReadStats`.
Problems with the file itself (missing, unreadable, a required parquet column absent) always raise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlrt_megatron.atomic_files import atomic_write_text
from rlrt_megatron.data.records import (
    DatasetError,
    OnBadRow,
    PromptRecord,
    ReadStats,
    RowError,
    check_on_bad_row,
    row_error_message,
    validate_answer,
    validate_messages,
    validate_optional_text,
)

PARQUET_REQUIRED_COLUMNS = ("prompt", "reward_model")
PARQUET_OPTIONAL_COLUMNS = ("data_source", "extra_info")
_JSONL_KNOWN_KEYS = {"prompt", "answer", "solution", "data_source"}


def read_prompts(
    path: str | Path, *, on_bad_row: OnBadRow = "raise"
) -> tuple[list[PromptRecord], ReadStats]:
    """Read a ``.parquet`` or ``.jsonl`` prompt file, chosen by its suffix."""
    path = Path(path)
    readers: dict[str, Callable[..., tuple[list[PromptRecord], ReadStats]]] = {
        ".parquet": read_parquet,
        ".jsonl": read_jsonl,
    }
    reader = readers.get(path.suffix)
    if reader is None:
        raise DatasetError(
            f"{path}: unknown dataset format {path.suffix!r}; expected one of {sorted(readers)}"
        )
    return reader(path, on_bad_row=on_bad_row)


def json_lines(
    path: str | Path, error: Callable[[str], Exception]
) -> Iterator[tuple[str, int, Any]]:
    """``(where, line number, decoded JSON)`` of every non-blank line of a jsonl file, in order;
    ``where`` is ``"path:line"`` for the caller's own messages.

    Strict: an unreadable file or a malformed line raises ``error(message)`` naming the file (and
    ``path:line``), the caller's own exception type (`rlrt score`'s and `rlrt analyze`'s inputs).
    Dataset files, which may skip bad rows, go through `read_jsonl`.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise error(f"cannot read {path}: {reason}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise error(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        yield where, number, value


def read_jsonl(
    path: str | Path, *, on_bad_row: OnBadRow = "raise"
) -> tuple[list[PromptRecord], ReadStats]:
    """Read a jsonl file of ``{"prompt", "answer", "solution"?}`` objects (see the module doc)."""
    check_on_bad_row(on_bad_row)
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    stats = ReadStats(path=str(path))
    records: list[PromptRecord] = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            # Decode per line so that a bad byte is reported with its line, not as a file failure.
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _bad_row(stats, on_bad_row, f"{path}: line {line_no}: not valid UTF-8 ({e.reason})")
                continue
            if not line.strip():
                continue
            stats.num_rows += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                msg = f"{path}: line {line_no}: malformed JSON ({e.msg} at column {e.colno})"
                _bad_row(stats, on_bad_row, msg)
                continue
            if not isinstance(row, dict):
                msg = f"{path}: line {line_no}: expected a JSON object, got {type(row).__name__}"
                _bad_row(stats, on_bad_row, msg)
                continue
            try:
                record = _jsonl_record(row, index=line_no - 1, default_source=path.stem)
            except RowError as e:
                _bad_row(stats, on_bad_row, row_error_message(path, f"line {line_no}", e))
                continue
            records.append(record)
    stats.num_kept = len(records)
    return records, stats


def read_parquet(
    path: str | Path, *, on_bad_row: OnBadRow = "raise", batch_size: int = 1024
) -> tuple[list[PromptRecord], ReadStats]:
    """Read a verl-style parquet file (see the module doc); rows stream in batches."""
    import pyarrow.parquet as pq

    check_on_bad_row(on_bad_row)
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"{path}: not a readable parquet file ({e})") from e
    columns = set(parquet.schema_arrow.names)
    missing = [c for c in PARQUET_REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{path}: missing required column(s) {missing}; verl parquet needs "
            f"{list(PARQUET_REQUIRED_COLUMNS)}, found {sorted(columns)}"
        )
    wanted = [c for c in PARQUET_REQUIRED_COLUMNS + PARQUET_OPTIONAL_COLUMNS if c in columns]
    stats = ReadStats(path=str(path))
    records: list[PromptRecord] = []
    row_index = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=wanted):
        for row in batch.to_pylist():
            stats.num_rows += 1
            try:
                records.append(_parquet_record(row, index=row_index))
            except RowError as e:
                _bad_row(stats, on_bad_row, row_error_message(path, f"row {row_index}", e))
            row_index += 1
    stats.num_kept = len(records)
    return records, stats


def _bad_row(stats: ReadStats, on_bad_row: OnBadRow, message: str) -> None:
    if on_bad_row == "raise":
        raise DatasetError(message)
    stats.record_bad(message)


def _jsonl_record(row: dict[str, Any], *, index: int, default_source: str) -> PromptRecord:
    prompt = validate_messages(row.get("prompt"), "prompt")
    answer = validate_answer(row.get("answer"), "answer")
    solution = validate_optional_text(row.get("solution"), "solution")
    source = row.get("data_source", default_source)
    if not isinstance(source, str):
        raise RowError("data_source", f"must be a string, got {type(source).__name__}")
    extra = {k: v for k, v in row.items() if k not in _JSONL_KNOWN_KEYS}
    return PromptRecord(
        prompt=prompt,
        ground_truth=answer,
        solution=solution,
        data_source=source,
        index=index,
        extra=extra,
    )


def _parquet_record(row: dict[str, Any], *, index: int) -> PromptRecord:
    prompt = validate_messages(row.get("prompt"), "prompt")
    reward_model = row.get("reward_model")
    if reward_model is None:
        raise RowError("reward_model", "is missing")
    if not isinstance(reward_model, dict):
        raise RowError(
            "reward_model", f"must be a struct with ground_truth, got {type(reward_model).__name__}"
        )
    answer = validate_answer(reward_model.get("ground_truth"), "reward_model.ground_truth")
    source = row.get("data_source") or ""
    if not isinstance(source, str):
        raise RowError("data_source", f"must be a string, got {type(source).__name__}")
    extra_info = row.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise RowError("extra_info", f"must be a struct, got {type(extra_info).__name__}")
    solution = validate_optional_text(extra_info.get("solution"), "extra_info.solution")
    extra = dict(extra_info)
    if reward_model.get("style") is not None:
        extra["reward_style"] = reward_model["style"]
    return PromptRecord(
        prompt=prompt,
        ground_truth=answer,
        solution=solution,
        data_source=source,
        index=index,
        extra=extra,
    )


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as jsonl (one object per line, UTF-8), atomically via a temporary file."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
