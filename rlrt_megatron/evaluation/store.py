"""The output folder of one evaluation, and what makes it resumable.

``settings.json`` records everything that decides the samples (model, sampling, grader, the
benchmarks' contents); ``samples.jsonl`` grows by whole problems (all ``n`` samples of a problem
are appended in one write, flushed and fsynced). A restart with the same settings keeps every
problem that has all its samples and regenerates only the rest; different settings are refused,
naming the key that differs, because mixing samples of two configurations would silently corrupt
avg@n / pass@k.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlrt_megatron.atomic_files import atomic_write_text

SETTINGS_FILE = "settings.json"
SAMPLES_FILE = "samples.jsonl"
# Recorded for the report, but free to change between runs of one folder.
UNCHECKED_KEYS = frozenset({"label", "benchmarks"})


class ResumeError(ValueError):
    """The output folder holds an evaluation with different settings."""


def check_or_write_settings(output: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Write ``settings.json``, or check it against an existing one; returns the merged settings.

    ``settings["benchmarks"]`` maps name → {"file", "problems", "digest"}: a benchmark evaluated
    before must have the same digest (same questions and answers); new benchmarks may be added to
    a folder. Every other key must be equal, except ``label`` (the newest label wins).
    """
    output.mkdir(parents=True, exist_ok=True)
    path = output / SETTINGS_FILE
    if not path.exists():
        _write_json(path, settings)
        return settings
    old = json.loads(path.read_text())
    for key in sorted(set(old) | set(settings)):
        if key in UNCHECKED_KEYS:
            continue
        if old.get(key) != settings.get(key):
            raise ResumeError(
                f"{output} holds an evaluation with {key}={old.get(key)!r}, this one has"
                f" {key}={settings.get(key)!r}; use another --output folder (or the same settings"
                " to resume)"
            )
    benchmarks = dict(old.get("benchmarks", {}))
    for name, info in settings["benchmarks"].items():
        if name in benchmarks and benchmarks[name]["digest"] != info["digest"]:
            raise ResumeError(
                f"{output} holds samples of a different benchmark {name!r} (was"
                f" {benchmarks[name]['file']}, {benchmarks[name]['problems']} problems; now"
                f" {info['file']}, {info['problems']} problems); use another --output folder"
            )
        benchmarks[name] = info
    merged = {**old, "label": settings.get("label", old.get("label")), "benchmarks": benchmarks}
    _write_json(path, merged)
    return merged


def load_samples(output: Path, n: int) -> list[dict[str, Any]]:
    """The samples of every complete problem in ``samples.jsonl`` (file order).

    A torn last line (a crash mid-write) and problems with fewer than ``n`` samples are dropped,
    and the file is rewritten without them, so that appending continues from a clean state.
    """
    path = output / SAMPLES_FILE
    if not path.exists():
        return []
    rows, torn = [], False
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:  # only the unterminated last line can be torn by a crash
                raise ResumeError(f"{path}: line {i + 1} is not valid JSON") from None
            torn = True
    counts: dict[tuple[str, int], int] = {}
    for row in rows:
        key = (row["benchmark"], row["problem_index"])
        counts[key] = counts.get(key, 0) + 1
    complete = [r for r in rows if counts[(r["benchmark"], r["problem_index"])] == n]
    if torn or len(complete) != len(rows):
        _rewrite(path, complete)
    return complete


def finished_problems(samples: Iterable[dict[str, Any]]) -> set[tuple[str, int]]:
    """(benchmark, problem_index) of the given (complete) samples."""
    return {(s["benchmark"], s["problem_index"]) for s in samples}


def append_samples(output: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows to ``samples.jsonl`` in one write, then flush and fsync (durable on return)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with (output / SAMPLES_FILE).open("a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rewrite(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")
