"""`rlrt compare`'s table and figures from finished runs' files (no training here; the end-to-end
run through the real stack is tests/evaluation/test_compare.py): pass@k curves after and before
training, the warmed-up model's row pooled over every run, and the entropy curves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlrt_megatron.trainer.compare import collect, markdown, run_dir_of, write_comparison

METHODS, SEEDS, STEPS = ("grpo", "rlrt_all"), 2, 20


def _evaluation(acc: float, scale: float) -> dict:
    curve = {
        f"pass@{k}": min(1.0, acc * (1 + scale * np.log2(k))) for k in (1, 2, 4, 8, 16, 32, 64)
    }
    return {"accuracy": acc, **curve, "samples_per_prompt": 64.0, "num_prompts": 128.0}


def _write_runs(out):
    for m, method in enumerate(METHODS):
        for seed in range(SEEDS):
            run = run_dir_of(out, method, seed)
            run.mkdir(parents=True)
            summary = {
                "method": method,
                "train_reward_last": 0.3 + 0.1 * m + 0.01 * seed,
                "train_reward_mean_last_10": 0.25 + 0.1 * m + 0.02 * seed,
                "eval_before": _evaluation(0.2 + 0.01 * seed, 0.3),
                "eval_after": _evaluation(0.25 + 0.05 * m + 0.01 * seed, 0.2),
            }
            (run / "summary.json").write_text(json.dumps(summary))
            rows = [
                {"step": s, "reward/mean": 0.3, "policy/entropy": 0.5 - 0.02 * s * m}
                for s in range(1, STEPS + 1)
            ]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_table_holds_the_pass_at_k_curves_and_the_warmed_up_model(tmp_path):
    _write_runs(tmp_path)
    table = collect(tmp_path, METHODS, SEEDS)
    row = table["methods"]["rlrt_all"]
    after = [0.30, 0.31]  # accuracy after training of rlrt_all's two seeds
    assert row["eval_pass@k"]["1"]["values"] == pytest.approx([100 * a for a in after])
    assert row["eval_pass@k"]["8"]["mean"] == pytest.approx(
        np.mean([100 * a * (1 + 0.2 * 3) for a in after])
    )
    assert row["eval_pass@k"]["64"]["std"] == pytest.approx(
        np.std([100 * min(1.0, a * 2.2) for a in after], ddof=1)
    )
    assert row["eval_pass@n"]["values"] == row["eval_pass@k"]["64"]["values"]
    base = table["base"]
    assert base["runs"] == len(METHODS) * SEEDS
    assert base["eval_avg@n"]["values"] == pytest.approx([20.0, 21.0] * len(METHODS))
    md = markdown(table)
    assert row["train_reward_mean_last_10"]["values"] == pytest.approx([0.35, 0.37])
    assert (
        "| Method | Seeds | Final train reward | Train reward, last 10 steps |"
        " Held-out avg@64 (before → after) | pass@8 | pass@64 |"
    ) in md
    assert "| warmed-up model | 4 runs | – | – | 20.5 ± 0.6 |" in md
    assert "| rlrt_all | 2 | 0.405 ± 0.007 | 0.360 ± 0.014 | 20.5 → 30.5 ± 0.7 |" in md
    p8 = row["eval_pass@k"]["8"]
    assert f"| {p8['mean']:.1f} ± {p8['std']:.1f} |" in md


def test_write_comparison_draws_reward_entropy_and_pass_at_k_figures(tmp_path):
    _write_runs(tmp_path)
    write_comparison(tmp_path, METHODS, SEEDS)
    for name in ("reward_curves.png", "entropy_curves.png", "pass_at_k.png"):
        png = tmp_path / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000, name
    assert json.loads((tmp_path / "compare.json").read_text())["eval_n"] == 64


def test_runs_that_logged_no_entropy_draw_no_entropy_figure(tmp_path):
    _write_runs(tmp_path)
    for path in tmp_path.glob("*/seed*/metrics.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text(
            "".join(json.dumps({"step": r["step"], "reward/mean": 0.1}) + "\n" for r in rows)
        )
    write_comparison(tmp_path, METHODS, SEEDS)
    assert (tmp_path / "reward_curves.png").exists()
    assert not (tmp_path / "entropy_curves.png").exists()


def test_a_difference_within_the_seed_spread_is_no_difference():
    from rlrt_megatron.trainer.compare import compare_outcome

    a, b = {"mean": 30.0, "std": 2.0}, {"mean": 28.5, "std": 1.0}
    assert compare_outcome(a, b) == ("no difference", 1.5, 2.0)
    assert compare_outcome({"mean": 33.0, "std": 2.0}, b) == ("higher", 4.5, 2.0)
    assert compare_outcome(b, {"mean": 33.0, "std": 0.5}) == ("lower", -4.5, 1.0)


def test_collapse_is_the_first_step_below_half_the_starting_reward():
    from rlrt_megatron.trainer.compare import collapse_step

    steady = [[0.4] * 30, [0.2] * 30]  # seed mean 0.3 throughout
    assert collapse_step(steady, 5) == (None, pytest.approx(0.3), pytest.approx(0.3))
    # Both seeds drop to 0 at step 21: the 5-step trailing mean of 0.3 falls to
    # 0.3 * (5 - j) / 5 after j zero steps, below 0.15 once j = 3, i.e. at step 23.
    falling = [[0.4] * 20 + [0.0] * 10, [0.2] * 20 + [0.0] * 10]
    step, first, last = collapse_step(falling, 5)
    assert (step, first, last) == (23, pytest.approx(0.3), pytest.approx(0.0))
    with pytest.raises(ValueError, match="needs >= 5 steps"):
        collapse_step([[0.1] * 4], 5)
