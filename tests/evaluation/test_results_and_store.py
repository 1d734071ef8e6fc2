"""results.json from samples.jsonl (against the algorithm core's pass_at_k), the markdown table
and plot, and the resumable store (torn lines, incomplete problems, changed settings)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlrt_megatron.algorithms.metrics import pass_at_k
from rlrt_megatron.evaluation.evaluate import write_report
from rlrt_megatron.evaluation.results import check_ks, compute_results, write_results
from rlrt_megatron.evaluation.store import (
    SAMPLES_FILE,
    ResumeError,
    append_samples,
    check_or_write_settings,
    load_samples,
)


def _samples(rng, benchmark: str, problems: int, n: int, p_correct: float) -> list[dict]:
    return [
        {
            "benchmark": benchmark,
            "problem_index": i,
            "sample_index": j,
            "response": "r",
            "extracted_answer": None,
            "correct": bool(rng.random() < p_correct),
        }
        for i in range(problems)
        for j in range(n)
    ]


def recompute(samples: list[dict], benchmark: str, n: int, k: int) -> float:
    """pass@k in % straight from the sample lines, by the core estimator (problems in index
    order, so that the float sum runs in the same order as results.json's)."""
    per_problem: dict[int, int] = {}
    for s in samples:
        if s["benchmark"] == benchmark:
            per_problem[s["problem_index"]] = per_problem.get(s["problem_index"], 0) + s["correct"]
    return 100.0 * float(np.mean([pass_at_k(n, c, k) for _, c in sorted(per_problem.items())]))


def test_results_json_agrees_with_pass_at_k_from_samples(tmp_path):
    rng = np.random.default_rng(0)
    n = 8
    samples = _samples(rng, "aime", 7, n, 0.3) + _samples(rng, "amc", 5, n, 0.6)
    rng.shuffle(samples)  # order in the file must not matter
    append_samples(tmp_path, samples)
    results = compute_results(load_samples(tmp_path, n), ["aime", "amc"], n, check_ks(None, n))
    write_results(tmp_path, results)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved) == ["benchmarks"] and list(saved["benchmarks"]) == ["aime", "amc"]
    lines = [json.loads(x) for x in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    for name, row in saved["benchmarks"].items():
        assert row["n"] == n and sorted(row["pass@k"], key=int) == ["1", "2", "4", "8"]
        for k, value in row["pass@k"].items():
            assert value == recompute(lines, name, n, int(k))
        assert row["pass@n"] == recompute(lines, name, n, n)
        mine = [s["correct"] for s in lines if s["benchmark"] == name]
        assert row["avg@n"] == pytest.approx(100.0 * np.mean(mine), abs=1e-12)
        assert row["pass@k"]["1"] == pytest.approx(row["avg@n"], abs=1e-9)


def test_k_larger_than_n_is_an_error():
    with pytest.raises(
        ValueError, match=r"pass@32 needs at least 32 samples per problem, but n=16"
    ):
        check_ks([1, 32], 16)
    assert check_ks([4, 1, 4], 16) == [1, 4]
    assert check_ks(None, 6) == [1, 2, 4, 6]


def test_table_and_plot_overlay_checkpoints(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for label, p in (("base", 0.2), ("rlrt", 0.5)):
        samples = _samples(rng, "aime", 6, 4, p) + _samples(rng, "math500", 6, 4, p)
        rows.append((label, compute_results(samples, ["aime", "math500"], 4, [1, 2, 4])))
    rows.append(("only_aime", {"benchmarks": {"aime": rows[0][1]["benchmarks"]["aime"]}}))
    table, plot = write_report(tmp_path, rows)
    text = table.read_text().splitlines()
    assert text[0] == "avg@4 / pass@4 (%)"
    assert text[2] == "| Checkpoint | aime | math500 | Average |"
    aime = rows[1][1]["benchmarks"]["aime"]
    assert f"| rlrt | {aime['avg@n']:.1f} / {aime['pass@n']:.1f} |" in text[5]
    assert text[6].startswith("| only_aime |") and "| — |" in text[6]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_load_samples_drops_torn_lines_and_incomplete_problems(tmp_path):
    n = 3
    rows = _samples(np.random.default_rng(2), "b", 3, n, 0.5)
    append_samples(tmp_path, rows[:7])  # problems 0, 1 complete; problem 2 has one sample
    with (tmp_path / SAMPLES_FILE).open("a") as f:
        f.write('{"benchmark": "b", "problem_')  # a crash mid-write
    kept = load_samples(tmp_path, n)
    assert kept == rows[:6]
    assert (tmp_path / SAMPLES_FILE).read_text().count("\n") == 6  # rewritten clean
    (tmp_path / SAMPLES_FILE).write_text("not json\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ResumeError, match="line 1 is not valid JSON"):
        load_samples(tmp_path, n)


def test_settings_must_match_to_resume(tmp_path):
    bench = {"aime": {"file": "a.jsonl", "problems": 3, "digest": "abc"}}
    settings = {"model": "/m", "n": 4, "temperature": 0.7, "label": "x", "benchmarks": bench}
    check_or_write_settings(tmp_path, settings)
    relabelled = {**settings, "label": "y", "benchmarks": {"amc": {**bench["aime"], "digest": "d"}}}
    merged = check_or_write_settings(tmp_path, relabelled)
    assert merged["label"] == "y" and sorted(merged["benchmarks"]) == ["aime", "amc"]
    with pytest.raises(ResumeError, match=r"temperature=0.7, this one has temperature=1.0"):
        check_or_write_settings(tmp_path, {**settings, "temperature": 1.0})
    changed = {**settings, "benchmarks": {"aime": {**bench["aime"], "digest": "zzz"}}}
    with pytest.raises(ResumeError, match="different benchmark 'aime'"):
        check_or_write_settings(tmp_path, changed)


def test_moving_average_and_reward_curve_figure(tmp_path):
    from rlrt_megatron.evaluation.plots import moving_average, plot_reward_curves

    assert moving_average([1.0, 2.0, 3.0, 4.0], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([1.0, 5.0], 1).tolist() == [1.0, 5.0]
    curves = {"grpo": [[0.1, 0.2, 0.3], [0.2, 0.2]], "rlrt": [[0.3, 0.4, 0.5]]}
    png = plot_reward_curves(curves, tmp_path / "c.png", smooth=2)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
