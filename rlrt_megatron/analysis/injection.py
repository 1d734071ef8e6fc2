"""Bookkeeping of reflection injection (paper Figure 6).

A reflection string is inserted into a rollout at a chosen position (argmax D̄_t, a random
position, argmin D̄_t) and generation continues. On *hard* problems the interesting event is
wrong → right; on *easy* ones right → wrong. The paper (§ reflection injection, Figure 6) defines
the subsets by the number of correct rollouts out of K = 8: hard = n_correct ∈ {0, 1, 2},
easy = n_correct ∈ {5, 6, 7} (all-correct problems, 8 of 8, are in neither). These functions
turn graded outcomes into flip rates with Wilson confidence intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The paper's subsets: correct rollouts out of K = 8 sampled per problem.
PAPER_GROUP_SIZE = 8
PAPER_HARD_CORRECT = (0, 1, 2)
PAPER_EASY_CORRECT = (5, 6, 7)


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


def check_subsets(
    hard_correct: Sequence[int], easy_correct: Sequence[int], group_size: int | None
) -> None:
    """ValueError unless the two count sets are disjoint and within [0, ``group_size``]."""
    if set(hard_correct) & set(easy_correct):
        raise ValueError(
            f"hard {sorted(hard_correct)} and easy {sorted(easy_correct)} correct counts overlap"
        )
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be >= 1 (or None: any K), got {group_size}")
    top = group_size if group_size is not None else math.inf
    bad = [c for c in (*hard_correct, *easy_correct) if not 0 <= c <= top]
    if bad:
        raise ValueError(f"correct counts must be in [0, {group_size}], got {bad}")


def problem_subset(
    correct: int,
    rollouts: int,
    *,
    hard_correct: Sequence[int] = PAPER_HARD_CORRECT,
    easy_correct: Sequence[int] = PAPER_EASY_CORRECT,
    group_size: int | None = PAPER_GROUP_SIZE,
    problem: str = "",
) -> str | None:
    """The subset ("hard", "easy" or None) of a problem with ``correct`` of ``rollouts`` correct.

    By count, as the paper: hard when ``correct`` ∈ ``hard_correct``, easy when ∈
    ``easy_correct``. The counts mean "out of ``group_size``": a problem with another number of
    rollouts is a ValueError naming it (None accepts any K).
    """
    if rollouts < 1 or not 0 <= correct <= rollouts:
        raise ValueError(f"problem {problem}: bad correct count {correct} of {rollouts}")
    if group_size is not None and rollouts != group_size:
        raise ValueError(
            f"problem {problem}: {rollouts} rollouts, but the hard/easy subsets count correct "
            f"rollouts out of {group_size} (set the group size to the file's K)"
        )
    if correct in hard_correct:
        return "hard"
    if correct in easy_correct:
        return "easy"
    return None


def flip_rates(
    outcomes: Iterable[InjectionOutcome],
    *,
    hard_correct: Sequence[int] = PAPER_HARD_CORRECT,
    easy_correct: Sequence[int] = PAPER_EASY_CORRECT,
    group_size: int | None = PAPER_GROUP_SIZE,
    hard_max_fraction: float | None = None,
    easy_min_fraction: float | None = None,
) -> dict[str, dict[str, float]]:
    """Per insertion kind: the wrong→right rate over originally-wrong rollouts of hard problems
    and the right→wrong rate over originally-right rollouts of easy problems, with counts and
    Wilson 95% intervals.

    Hard/easy by count (:func:`problem_subset`; defaults: the paper's {0, 1, 2} / {5, 6, 7} of
    8). ``hard_max_fraction`` / ``easy_min_fraction`` (both or neither) select by fraction
    correct instead (hard: ≤, easy: ≥) — not the paper's rule, kept for files of other K.
    """
    by_fraction = hard_max_fraction is not None or easy_min_fraction is not None
    if by_fraction:
        if hard_max_fraction is None or easy_min_fraction is None:
            raise ValueError("give both hard_max_fraction and easy_min_fraction, or neither")
        if not 0 <= hard_max_fraction < easy_min_fraction <= 1:
            raise ValueError("need 0 <= hard_max_fraction < easy_min_fraction <= 1")
    else:
        check_subsets(hard_correct, easy_correct, group_size)
    tallies: dict[str, dict[str, int]] = {}
    for o in outcomes:
        if o.problem_rollouts < 1 or not 0 <= o.problem_correct <= o.problem_rollouts:
            raise ValueError(f"problem {o.problem_id}: bad correct count {o.problem_correct}")
        t = tallies.setdefault(o.position_kind, dict(w2r=0, wrong=0, r2w=0, right=0))
        if by_fraction:
            fraction = o.problem_correct / o.problem_rollouts
            subset = (
                "hard"
                if fraction <= hard_max_fraction
                else "easy"
                if fraction >= easy_min_fraction
                else None
            )
        else:
            subset = problem_subset(
                o.problem_correct,
                o.problem_rollouts,
                hard_correct=hard_correct,
                easy_correct=easy_correct,
                group_size=group_size,
                problem=o.problem_id,
            )
        if subset == "hard" and not o.correct_before:
            t["wrong"] += 1
            t["w2r"] += int(o.correct_after)
        elif subset == "easy" and o.correct_before:
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
