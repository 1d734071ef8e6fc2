"""Bookkeeping of reflection injection (paper Figure 6).

A reflection string is inserted into a rollout at a chosen position (argmax D̄_t, a random
position, argmin D̄_t) and generation continues. On *hard* problems (few correct rollouts out of K)
the interesting event is wrong → right; on *easy* ones (most correct) right → wrong. These
functions turn graded outcomes into flip rates with Wilson confidence intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class InjectionOutcome:
    problem_id: str
    position_kind: str
    """Where the reflection was inserted, e.g. "max_kl", "random", "min_kl"."""
    correct_before: bool
    correct_after: bool
    problem_correct: int
    """How many of the problem's K original rollouts were correct (defines hard/easy)."""
    problem_rollouts: int


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z = 1.96); (0, 1) with no trials."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def flip_rates(
    outcomes: Iterable[InjectionOutcome],
    *,
    hard_max_fraction: float = 0.25,
    easy_min_fraction: float = 0.75,
) -> dict[str, dict[str, float]]:
    """Per insertion kind: wrong→right rate over originally-wrong rollouts of hard problems
    (fraction correct ≤ ``hard_max_fraction``) and right→wrong rate over originally-right
    rollouts of easy problems (fraction correct ≥ ``easy_min_fraction``), with counts and
    Wilson 95% intervals."""
    if not 0 <= hard_max_fraction < easy_min_fraction <= 1:
        raise ValueError("need 0 <= hard_max_fraction < easy_min_fraction <= 1")
    tallies: dict[str, dict[str, int]] = {}
    for o in outcomes:
        if o.problem_rollouts < 1 or not 0 <= o.problem_correct <= o.problem_rollouts:
            raise ValueError(f"problem {o.problem_id}: bad correct count {o.problem_correct}")
        t = tallies.setdefault(o.position_kind, dict(w2r=0, wrong=0, r2w=0, right=0))
        fraction = o.problem_correct / o.problem_rollouts
        if fraction <= hard_max_fraction and not o.correct_before:
            t["wrong"] += 1
            t["w2r"] += int(o.correct_after)
        elif fraction >= easy_min_fraction and o.correct_before:
            t["right"] += 1
            t["r2w"] += int(not o.correct_after)
    report = {}
    for kind, t in tallies.items():
        w2r_ci = wilson_interval(t["w2r"], t["wrong"])
        r2w_ci = wilson_interval(t["r2w"], t["right"])
        report[kind] = {
            "wrong_to_right": t["w2r"] / t["wrong"] if t["wrong"] else float("nan"),
            "wrong_to_right_ci_low": w2r_ci[0],
            "wrong_to_right_ci_high": w2r_ci[1],
            "hard_wrong_rollouts": t["wrong"],
            "right_to_wrong": t["r2w"] / t["right"] if t["right"] else float("nan"),
            "right_to_wrong_ci_low": r2w_ci[0],
            "right_to_wrong_ci_high": r2w_ci[1],
            "easy_right_rollouts": t["right"],
        }
    return report
