"""Benchmark files for `rlrt eval`: one file = one benchmark, named after the file's stem.

Accepted layouts (column names are matched case-insensitively):

jsonl, one object per line (blank lines ignored)::

    {"problem": "What is 3+4?", "answer": "7", ...}

  The question is the first of ``problem``, ``question``, ``prompt`` present (a string, or for
  ``prompt`` also a list of chat messages, as the quickstart's synthetic files write it).

flat parquet, one row per problem, the layouts AIME / MATH500 / AMC are distributed in:

  ===================================  ===============================================
  HuggingFaceH4/MATH-500               problem, solution, answer, subject, level,
                                       unique_id
  AI-MO/aimo-validation-aime           id, problem, solution, answer (string), url
  AI-MO/aimo-validation-amc            id, problem, answer (a number), url
  Maxwell-Jia/AIME_2024                ID, Problem, Solution, Answer (int64)
  math-ai/aime24, math-ai/aime25       problem or question; answer, or only a solution
                                       ending in ``\\boxed{...}``
  ===================================  ===============================================

  The question column is ``problem`` or ``question``; the reference answer is ``answer`` (a
  string, an integer, or an integral float such as AMC's ``142.0``, which becomes ``"142"``);
  without an ``answer`` column the last ``\\boxed{}`` of ``solution`` is the answer.

verl parquet (``prompt`` as a chat list and ``reward_model.ground_truth``; see
`rlrt_megatron.data.readers.read_parquet`): the chat messages are used as they are.

Every other column/key is kept in `Problem.meta`. A row without a question or an answer raises
`BenchmarkError` naming the file, the row (1-based line for jsonl, 0-based row for parquet) and
the key; an empty file is an error too.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrt_megatron.data.records import DatasetError, RowError, validate_answer, validate_messages
from rlrt_megatron.rewards.math_verifier import extract_last_boxed

QUESTION_KEYS = ("problem", "question", "prompt")
ANSWER_KEY = "answer"
SOLUTION_KEY = "solution"
SUFFIXES = (".jsonl", ".parquet")


class BenchmarkError(ValueError):
    """A benchmark file that cannot be evaluated; the message names the file, row and key."""


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One benchmark problem: the chat messages the model sees, the reference answer, the rest."""

    index: int
    """0-based position among the file's problems (its ``problem_index`` in samples.jsonl)."""
    messages: list[dict[str, str]]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    name: str
    """The file's stem (``aime24.parquet`` → ``aime24``)."""
    path: Path
    problems: list[Problem]

    def digest(self) -> str:
        """A hash of the questions and answers: a resumed evaluation must see the same problems."""
        h = hashlib.sha256()
        for p in self.problems:
            h.update(json.dumps([p.messages, p.answer], sort_keys=True).encode())
        return h.hexdigest()[:16]


def read_benchmark(path: str | Path) -> Benchmark:
    """Read one benchmark file (``.jsonl`` or ``.parquet``, see the module doc)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise BenchmarkError(f"{path}: unknown benchmark format {path.suffix!r}; use {SUFFIXES}")
    if not path.is_file():
        raise BenchmarkError(f"{path}: no such file")
    problems = _read_jsonl(path) if path.suffix == ".jsonl" else _read_parquet(path)
    if not problems:
        raise BenchmarkError(f"{path}: the file holds no problems")
    return Benchmark(path.stem, path, problems)


def read_benchmarks(paths: list[str | Path]) -> list[Benchmark]:
    """Read every file; two files with the same stem would share a name, which is an error."""
    benchmarks = [read_benchmark(p) for p in paths]
    seen: dict[str, Path] = {}
    for b in benchmarks:
        if b.name in seen:
            raise BenchmarkError(
                f"{b.path} and {seen[b.name]} would both be benchmark {b.name!r} (the file stem)"
            )
        seen[b.name] = b.path
    return benchmarks


def _read_jsonl(path: Path) -> list[Problem]:
    problems = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}: line {line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BenchmarkError(f"{where}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{where}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise BenchmarkError(f"{where}: expected a JSON object, got {type(row).__name__}")
            problems.append(_flat_problem(row, len(problems), where))
    return problems


def _read_parquet(path: Path) -> list[Problem]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise BenchmarkError(f"{path}: not a readable parquet file ({e})") from e
    columns = {c.lower() for c in parquet.schema_arrow.names}
    if "reward_model" in columns:
        return _read_verl(path)
    if not columns & {"problem", "question"}:
        raise BenchmarkError(
            f"{path}: no question column: expected 'problem' or 'question' (flat layout) or "
            f"'prompt' + 'reward_model' (verl layout), found {sorted(parquet.schema_arrow.names)}"
        )
    problems = []
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            problems.append(_flat_problem(row, len(problems), f"{path}: row {len(problems)}"))
    return problems


def _read_verl(path: Path) -> list[Problem]:
    from rlrt_megatron.data.readers import read_parquet

    try:
        records, _ = read_parquet(path)
    except DatasetError as e:
        raise BenchmarkError(str(e)) from None
    return [
        Problem(
            index=i,
            messages=r.prompt,
            answer=r.ground_truth,
            meta={"data_source": r.data_source, **r.extra},
        )
        for i, r in enumerate(records)
    ]


def _flat_problem(row: dict[str, Any], index: int, where: str) -> Problem:
    by_lower = {str(k).lower(): k for k in row}
    try:
        question_key = next((by_lower[k] for k in QUESTION_KEYS if k in by_lower), None)
        if question_key is None:
            raise RowError("problem", f"is missing (expected one of {list(QUESTION_KEYS)})")
        value = row[question_key]
        if question_key.lower() != "prompt" and not isinstance(value, str):
            raise RowError(question_key, f"must be a string, got {type(value).__name__}")
        messages = validate_messages(value, question_key)
        answer, used = _answer(row, by_lower)
    except RowError as e:
        raise BenchmarkError(f"{where}: {e}") from None
    meta = {k: _plain(v) for k, v in row.items() if k not in (question_key, used)}
    return Problem(index=index, messages=messages, answer=answer, meta=meta)


def _answer(row: dict[str, Any], by_lower: dict[str, str]) -> tuple[str, str]:
    """The reference answer and the key it came from."""
    key = by_lower.get(ANSWER_KEY)
    if key is not None and row[key] is not None:
        value = row[key]
        # AMC answers come as floats (142.0) in some distributions; an integral float is an int.
        if isinstance(value, float):
            if not math.isfinite(value):
                raise RowError(key, f"is not a finite number ({value})")
            value = int(value) if value.is_integer() else repr(value)
        return validate_answer(value, key), key
    solution_key = by_lower.get(SOLUTION_KEY)
    if solution_key is not None and isinstance(row[solution_key], str):
        boxed = extract_last_boxed(row[solution_key])
        if boxed is not None and boxed.strip():
            return boxed.strip(), "\0"  # the solution stays in meta
    raise RowError(ANSWER_KEY, "is missing (and there is no solution ending in \\boxed{...})")


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a parquet value (dates and decimals become strings)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
