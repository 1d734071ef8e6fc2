"""`grade_countdown`: an answer scores 1 only when it uses exactly the given numbers (each once,
+ - * and brackets) and equals the target; anything else in the box is rejected unevaluated."""

from __future__ import annotations

import pytest

from rlrt_megatron.rewards import get_reward
from rlrt_megatron.rewards.countdown import evaluate_countdown, grade_countdown, parse_ground_truth

TRUTH = "22:3,5,7"


@pytest.mark.parametrize(
    "response",
    [
        "3*5+7 = 15+7 = 22. \\boxed{3*5+7}",
        "\\boxed{7+5*3}",
        "\\boxed{7+3*5}",
        "\\boxed{ 3 \\times 5 + 7 }",
        "first \\boxed{1} then \\boxed{5*3+7}",  # the last box counts
    ],
)
def test_valid_answers_score_one(response):
    assert grade_countdown(response, TRUTH).score == 1.0


@pytest.mark.parametrize(
    "response, status",
    [
        ("no box here: 3*5+7", "no_answer"),
        ("\\boxed{22}", "wrong"),  # the target itself is not an expression over the numbers
        ("\\boxed{3*5+7+0}", "wrong"),  # an extra number
        ("\\boxed{3*5+8-1}", "wrong"),  # other numbers with the right value
        ("\\boxed{5*5-3}", "wrong"),  # a number used twice, one missing
        ("\\boxed{3*5-7}", "wrong"),  # the right numbers, the wrong value
        ("\\boxed{3*5+7-}", "wrong"),  # not an expression
        ("\\boxed{__import__('os')}", "wrong"),
        ("\\boxed{0x3*5+7}", "wrong"),  # only plain decimal literals
        ("\\boxed{3**5+7}", "wrong"),  # no powers
        ("\\boxed{-3*5+37}", "wrong"),
    ],
)
def test_invalid_answers_score_zero(response, status):
    assert grade_countdown(response, TRUTH) == (0.0, status)


def test_brackets_are_allowed_and_evaluated():
    assert evaluate_countdown("(3+5)*7", (3, 5, 7)) == 56
    assert grade_countdown("\\boxed{(3+5)*7}", "56:3,5,7").score == 1.0
    assert evaluate_countdown("3+5*7", (3, 5, 7)) == 38
    assert evaluate_countdown("2*2", (2, 2)) == 4 and evaluate_countdown("2", (2, 2)) is None


def test_ground_truth_format_is_checked_and_the_grader_is_registered():
    assert parse_ground_truth(" 22:3,5,7 ") == (22, (3, 5, 7))
    with pytest.raises(ValueError, match="'22:3,5,7'"):
        parse_ground_truth("22")
    with pytest.raises(ValueError, match="'22:3,5,7'"):
        parse_ground_truth("x:1,2")
    assert get_reward("countdown") is grade_countdown


def test_the_reward_pool_starts_countdown_workers_and_grades_in_them():
    from rlrt_megatron.rewards import RewardPool

    with RewardPool("countdown", num_workers=1, timeout_s=10.0) as pool:
        batch = pool.grade(["\\boxed{3*5+7}", "\\boxed{22}", "none"], [TRUTH] * 3)
    assert batch.scores == [1.0, 0.0, 0.0]
    assert batch.statuses == ["correct", "wrong", "no_answer"]
