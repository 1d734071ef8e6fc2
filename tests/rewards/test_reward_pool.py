"""The grading process pool: real spawned workers, real math-verify, real kills on timeout."""

from __future__ import annotations

import os
import time

import pytest
from _reward_test_graders import broken_grade, crashing_grade, hungry_grade, sleepy_grade

from rlrt_megatron.rewards import RewardConfig, RewardPool


def _alive(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def math_pool():
    with RewardPool.from_config(RewardConfig(name="math", num_workers=2, timeout_s=5.0)) as pool:
        yield pool


CASES = [
    ("3+4 = 7. \\boxed{7}", "7", "correct"),
    ("so \\boxed{\\frac{1}{2}}", "0.5", "correct"),
    ("3+4 = 8. \\boxed{8}", "7", "wrong"),
    ("I think it is 7", "7", "no_answer"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", "correct"),
    ("\\boxed{1}", "\\text{}", "error"),  # unparseable ground truth: the grader raises
]


def test_pool_grades_in_input_order(math_pool: RewardPool) -> None:
    responses, truths, expected = zip(*CASES, strict=True)
    batch = math_pool.grade(list(responses), list(truths))
    assert batch.statuses == list(expected)
    assert batch.scores == [1.0 if s == "correct" else 0.0 for s in expected]
    n = len(CASES)
    assert batch.stats == {
        "num_items": float(n),
        "reward_mean": 3 / n,
        "correct_rate": 3 / n,
        "no_answer_rate": 1 / n,
        "timeout_rate": 0.0,
        "error_rate": 1 / n,
    }


def test_pool_is_reused_across_steps(math_pool: RewardPool) -> None:
    pids = math_pool.worker_pids
    for step in range(3):
        batch = math_pool.grade(
            [f"\\boxed{{{i + step}}}" for i in range(8)], [str(i + step) for i in range(8)]
        )
        assert batch.scores == [1.0] * 8
    assert math_pool.worker_pids == pids and math_pool.num_restarts == 0
    empty = math_pool.grade([], [])
    assert empty.scores == [] and empty.stats["num_items"] == 0.0


def test_pool_rejects_bad_arguments(math_pool: RewardPool) -> None:
    with pytest.raises(ValueError, match="got 2 responses but 1 ground truths"):
        math_pool.grade(["a", "b"], ["1"])
    with pytest.raises(ValueError, match=r"responses\[1\] must be a str, got NoneType"):
        math_pool.grade(["a", None], ["1", "2"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        RewardPool("nope")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        RewardPool("math", timeout_s=0)


def test_hung_worker_is_killed_and_replaced() -> None:
    with RewardPool(sleepy_grade, num_workers=2, timeout_s=1.0) as pool:
        pool.grade(["\\boxed{1}"], ["1"])  # workers are up: time only the grading below
        before = pool.worker_pids
        start = time.monotonic()
        batch = pool.grade(
            ["SLEEP", "\\boxed{2}", "\\boxed{3}", "\\boxed{5}"], ["1", "2", "3", "4"]
        )
        elapsed = time.monotonic() - start
        assert batch.statuses == ["timeout", "correct", "correct", "wrong"]
        assert batch.scores == [0.0, 1.0, 1.0, 0.0]
        assert batch.stats["timeout_rate"] == 0.25
        assert 1.0 <= elapsed < 10.0  # the 600 s sleep was cut at the 1 s limit
        assert pool.num_timeouts == 1 and pool.num_restarts == 1
        after = pool.worker_pids
        killed = set(before) - set(after)
        assert len(killed) == 1 and not _alive(killed.pop())
        # The replacement serves the next step; a second hang is handled the same way.
        batch = pool.grade(["\\boxed{4}", "SLEEP", "\\boxed{6}"], ["4", "1", "6"])
        assert batch.statuses == ["correct", "timeout", "correct"]
        assert pool.num_timeouts == 2
    assert not any(_alive(pid) for pid in pool.worker_pids)


def test_real_pathological_answer_times_out() -> None:
    """9^(9^9) has ~370 million digits: sympy grinds on it far past the limit."""
    with RewardPool("math", num_workers=1, timeout_s=1.0) as pool:
        batch = pool.grade(["\\boxed{9^{9^{9}}}", "\\boxed{1}"], ["1", "1"])
        assert batch.statuses == ["timeout", "correct"]
        assert pool.num_timeouts == 1


def test_crashed_worker_scores_error_and_is_replaced() -> None:
    with RewardPool(crashing_grade, num_workers=1, timeout_s=5.0) as pool:
        batch = pool.grade(["CRASH", "\\boxed{2}"], ["1", "2"])
        assert batch.statuses == ["error", "correct"]
        assert pool.num_restarts == 1 and pool.num_timeouts == 0


def test_memory_limit_turns_a_blowup_into_an_error() -> None:
    with RewardPool(hungry_grade, num_workers=1, timeout_s=5.0, memory_limit_mb=1024) as pool:
        pid = pool.worker_pids
        batch = pool.grade(["ALLOCATE", "\\boxed{2}"], ["1", "2"])
        assert batch.statuses == ["error", "correct"]
        assert pool.worker_pids == pid  # MemoryError is caught inside the worker: no restart


def test_startup_failure_is_reported_and_closes_the_pool() -> None:
    pool = RewardPool(broken_grade, num_workers=1)
    with pytest.raises(RuntimeError, match="failed to start: RuntimeError: grader misconfigured"):
        pool.grade(["\\boxed{1}"], ["1"])
    with pytest.raises(RuntimeError, match="RewardPool is closed"):
        pool.grade(["\\boxed{1}"], ["1"])
