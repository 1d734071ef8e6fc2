"""``results.json`` and the markdown table, computed from ``samples.jsonl`` alone.

results.json::

    {"benchmarks": {"aime24": {"n": 16, "avg@n": 31.2, "pass@n": 70.0,
                               "pass@k": {"1": 31.2, "2": 43.9, ..., "16": 70.0}}}}

in percent, as the paper's tables; pass@k is the unbiased estimator averaged over problems
(`rlrt_megatron.algorithms.metrics.results_row`). JSON object keys are strings, so ``k`` is too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlrt_megatron.algorithms.metrics import default_ks, results_row
from rlrt_megatron.atomic_files import atomic_write_text

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"


def check_ks(ks: Iterable[int] | None, n: int) -> list[int]:
    """The pass@k abscissae: ``ks`` sorted (default 1, 2, 4, …, n); each must be in [1, n]."""
    if ks is None:
        return default_ks(n)
    ks = sorted(set(int(k) for k in ks))
    if not ks:
        raise ValueError("no k given")
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if k > n:
            raise ValueError(
                f"pass@{k} needs at least {k} samples per problem, but n={n}: raise --n or drop k"
            )
    return ks


def correctness_matrix(samples: Sequence[dict[str, Any]], benchmark: str, n: int) -> np.ndarray:
    """[P, n] bools of one benchmark's samples, rows by problem_index, columns by sample_index."""
    by_problem: dict[int, dict[int, bool]] = {}
    for s in samples:
        if s["benchmark"] == benchmark:
            by_problem.setdefault(s["problem_index"], {})[s["sample_index"]] = bool(s["correct"])
    if not by_problem:
        raise ValueError(f"no samples of benchmark {benchmark!r}")
    rows = []
    for index in sorted(by_problem):
        got = by_problem[index]
        if sorted(got) != list(range(n)):
            raise ValueError(
                f"benchmark {benchmark!r} problem {index} has samples {sorted(got)}, expected"
                f" 0..{n - 1}"
            )
        rows.append([got[i] for i in range(n)])
    return np.asarray(rows, dtype=bool)


def compute_results(
    samples: Sequence[dict[str, Any]], benchmarks: Sequence[str], n: int, ks: Sequence[int]
) -> dict[str, Any]:
    """``{"benchmarks": {name: results_row}}`` for ``benchmarks`` (in that order)."""
    out = {}
    for name in benchmarks:
        row = results_row(correctness_matrix(samples, name, n), ks=ks)
        row["pass@k"] = {str(k): v for k, v in row["pass@k"].items()}
        out[name] = row
    return {"benchmarks": out}


def write_results(output: Path, results: dict[str, Any]) -> Path:
    return atomic_write_text(output / RESULTS_FILE, json.dumps(results, indent=2) + "\n")


def read_results(folder: Path) -> tuple[str, dict[str, Any]]:
    """(label, results) of an evaluation folder; the label is its settings' ``label`` or the
    folder's name."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {RESULTS_FILE} (not a finished `rlrt eval` folder)")
    results = json.loads(path.read_text())
    settings = Path(folder) / "settings.json"
    label = json.loads(settings.read_text()).get("label") if settings.is_file() else None
    return label or Path(folder).name, results


def markdown_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The paper's Table 1 layout: one row per checkpoint, one ``avg@n / pass@n`` column per
    benchmark (``—`` where a checkpoint lacks a benchmark), plus the averages over benchmarks."""
    names: list[str] = []
    for _, results in rows:
        names += [b for b in results["benchmarks"] if b not in names]
    ns = {r["benchmarks"][b]["n"] for _, r in rows for b in r["benchmarks"]}
    n_text = str(ns.pop()) if len(ns) == 1 else "n"
    header = ["Checkpoint"] + names + ["Average"]
    lines = [
        f"avg@{n_text} / pass@{n_text} (%)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|",
    ]
    for label, results in rows:
        cells, avgs, passes = [label], [], []
        for b in names:
            row = results["benchmarks"].get(b)
            if row is None:
                cells.append("—")
                continue
            avgs.append(row["avg@n"])
            passes.append(row["pass@n"])
            cells.append(f"{row['avg@n']:.1f} / {row['pass@n']:.1f}")
        cells.append(f"{np.mean(avgs):.1f} / {np.mean(passes):.1f}" if avgs else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
