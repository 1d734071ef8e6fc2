import math

import pytest
import torch

from rlrt_megatron.analysis.injection import InjectionOutcome, flip_rates, wilson_interval
from rlrt_megatron.analysis.markers import (
    explore_exploit_ids,
    keep_marker,
    log_odds_z,
    score_markers,
)
from rlrt_megatron.analysis.shift import ccdf, js_per_position, tail_promotion, topk_overlap


def test_log_odds_z_hand_computed():
    # E = X = 15. wait: δ = ln(10.5/5.5) − ln(2.5/13.5) = 0.6466272 + 1.6863990 = 2.3330262,
    # Var = 1/10.5 + 1/2.5 = 0.4952381 → z = 2.3330262 / 0.7037316 = 3.315223; "so" is its mirror.
    z = log_odds_z({"wait": 10, "so": 5}, {"wait": 2, "so": 13})
    assert z["wait"] == pytest.approx(3.315223, abs=1e-5)
    # so: δ = ln(5.5/10.5) − ln(13.5/2.5) = −0.6466272 − 1.6863990; Var = 1/5.5 + 1/13.5
    assert z["so"] == pytest.approx(-2.3330262 / math.sqrt(1 / 5.5 + 1 / 13.5), abs=1e-5)
    only_one_side = log_odds_z({"hmm": 4}, {"ok": 4})
    assert only_one_side["hmm"] > 0 > only_one_side["ok"]
    with pytest.raises(ValueError, match="alpha must be > 0"):
        log_odds_z({}, {}, alpha=0)
    with pytest.raises(ValueError, match="non-negative integer counts"):
        log_odds_z({"a": -1}, {})


def test_marker_filter_and_scoring():
    assert keep_marker("Wait", 30)
    assert not keep_marker("Wait", 29)
    assert not keep_marker("ab", 100) and not keep_marker("a" * 16, 100)
    assert not keep_marker("x2y", 100) and not keep_marker("café", 100)
    assert not keep_marker("the", 100, stopwords=frozenset({"the"}))
    rows = score_markers(
        {"Wait": 60, "therefore": 5, "ab": 50},
        {"Wait": 5, "therefore": 60, "ab": 1},
        stopwords=frozenset(),
    )
    kept = {r["token"]: r["z"] for r in rows if r["kept"]}
    assert set(kept) == {"Wait", "therefore"} and kept["Wait"] > 3 and kept["therefore"] < -3
    assert rows[0]["token"] == "Wait"


def test_explore_exploit_ids_on_a_toy_vocabulary():
    student = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    teacher = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    explore, exploit = explore_exploit_ids(student, teacher)
    # Row 0: D = (ln 5/7, ln 3, 0, 0) → argmax 1, argmin 0. Row 1: argmax 0, argmin 3.
    assert explore.tolist() == [1, 0] and exploit.tolist() == [0, 3]


def test_shift_metrics_on_hand_made_distributions():
    ft = torch.log(torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.25, 0.25, 0.25, 0.25]]))
    base = torch.log(torch.tensor([[0.002, 0.5, 0.3, 0.198], [0.25, 0.25, 0.25, 0.25]]))
    js = js_per_position(ft, base)
    assert js[1].item() == pytest.approx(0.0, abs=1e-7) and js[0].item() > 0.1
    assert ccdf(js, [0.1, 10.0]) == [0.5, 0.0]
    # top-2: ft row 0 = {0, 1}, base = {1, 2} → 1/2 shared.
    assert topk_overlap(ft, base, 2)[0].item() == pytest.approx(0.5)
    assert topk_overlap(ft, base, 4).tolist() == [1.0, 1.0]
    # New top-1 of row 0 had base prob 0.002 (< 1e-2, not < 1e-3); row 1's had 0.25.
    assert tail_promotion(ft, base, (1e-1, 1e-2, 1e-3)) == [0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="different vocabularies"):
        js_per_position(ft, base[:, :3])


def test_flip_rates_on_scripted_outcomes():
    def o(kind, before, after, correct):
        return InjectionOutcome(
            problem_id="p",
            position_kind=kind,
            correct_before=before,
            correct_after=after,
            problem_correct=correct,
            problem_rollouts=8,
        )

    outcomes = (
        [o("max_kl", False, True, 1)] * 3
        + [o("max_kl", False, False, 1)] * 7
        + [o("max_kl", True, False, 7)] * 1
        + [o("max_kl", True, True, 6)] * 9
        + [o("max_kl", True, False, 8)] * 3  # all correct: not "easy" in the paper
        + [o("random", False, True, 2)] * 1
        + [o("random", False, False, 2)] * 9
        + [o("random", True, True, 4)] * 5  # medium difficulty: in neither subset
    )
    report = flip_rates(outcomes)
    assert report["max_kl"]["wrong_to_right"] == pytest.approx(0.3)
    assert report["max_kl"]["right_to_wrong"] == pytest.approx(0.1)
    assert report["max_kl"]["hard_wrong_rollouts"] == 10
    assert report["random"]["wrong_to_right"] == pytest.approx(0.1)
    assert math.isnan(report["random"]["right_to_wrong"])
    low, high = wilson_interval(3, 10)
    assert report["max_kl"]["wrong_to_right_ci_low"] == low
    assert low == pytest.approx(0.1078, abs=1e-3) and high == pytest.approx(0.6032, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
