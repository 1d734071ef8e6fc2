"""Answer extraction and math-verify grading (in-process), and the reward registry."""

from __future__ import annotations

import time

import pytest

from rlrt_megatron.rewards import (
    extract_answer_line,
    extract_last_boxed,
    get_reward,
    grade_math,
    grade_math_dapo,
    register_reward,
    reward_names,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{3} and then \\boxed{\\frac{1}{", "3"),  # truncated last box: previous one
        ("\\fbox{7}", "7"),
        ("The answer is $\\boxed 5$.", "5"),
        ("\\boxed{}", ""),
        ("no box here, the answer is 5", None),
        ("\\boxedx{5}", None),
        ("\\boxed{\\boxed{5}}", "5"),
        ("{ stray \\boxed{4} } }", "4"),
        ("\\boxed 5, no: \\boxed{6}", "6"),
        ("\\boxed{6}, no: \\boxed 5", "5"),
    ],
)
def test_extract_last_boxed(text: str, expected: str | None) -> None:
    assert extract_last_boxed(text) == expected


def test_extract_last_boxed_is_linear_on_adversarial_text() -> None:
    """Thousands of unterminated boxes: a rescan from each one would take minutes."""
    text = "\\boxed{7} " + "\\boxed{" * 50_000 + "x" * 50_000
    start = time.perf_counter()
    assert extract_last_boxed(text) == "7"
    assert time.perf_counter() - start < 2.0


def test_extract_answer_line() -> None:
    text = "Work.\nAnswer: 12\nMore work.\nAnswer: $34$\n"
    assert extract_answer_line(text) == "34"
    assert extract_answer_line("no answer line") is None


@pytest.mark.parametrize(
    ("response", "truth", "status"),
    [
        ("3+4 = 7. \\boxed{7}", "7", "correct"),
        ("3+4 = 8. \\boxed{8}", "7", "wrong"),
        ("the answer is 7", "7", "no_answer"),
        ("\\boxed{}", "7", "no_answer"),
        ("so \\boxed{\\frac{1}{2}}", "0.5", "correct"),
        ("so \\boxed{0.5}", "\\frac{1}{2}", "correct"),
        ("\\boxed{\\dfrac{3}{4}}", "0.75", "correct"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "correct"),
        ("\\boxed{1+x^2}", "x^2+1", "correct"),
        ("\\boxed{1,000}", "1000", "correct"),
        ("\\boxed{-5}", "5", "wrong"),
        ("\\boxed{7}", "\\boxed{7}", "correct"),  # a boxed ground truth is unwrapped
        ("\\boxed{@@@}", "7", "wrong"),  # unparseable answers are wrong, not missing
    ],
)
def test_grade_math(response: str, truth: str, status: str) -> None:
    grade = grade_math(response, truth)
    assert grade.status == status
    assert grade.score == (1.0 if status == "correct" else 0.0)


def test_grade_math_dapo_falls_back_to_answer_line() -> None:
    response = "Half of one.\nAnswer: \\frac{1}{2}"
    assert grade_math(response, "0.5").status == "no_answer"
    assert grade_math_dapo(response, "0.5").status == "correct"
    assert grade_math_dapo("Answer: 3", "0.5").status == "wrong"
    assert grade_math_dapo("nothing", "0.5").status == "no_answer"


def test_unparseable_ground_truth_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot parse the ground truth"):
        grade_math("\\boxed{1}", "\\text{}")


def _module_level_reward(response: str, ground_truth: str):
    return grade_math(response, ground_truth)


def test_registry() -> None:
    assert {"math", "math_dapo"} <= set(reward_names())
    assert get_reward("math") is grade_math
    assert get_reward("math_dapo") is grade_math_dapo
    with pytest.raises(ValueError, match=r"unknown reward 'nope'; registered: \["):
        get_reward("nope")
    with pytest.raises(ValueError, match="define it at module level"):
        register_reward("lambda_reward", lambda r, g: grade_math(r, g))
    with pytest.raises(ValueError, match="already registered"):
        register_reward("math", _module_level_reward)
    register_reward("math_copy_for_test", _module_level_reward)
    assert get_reward("math_copy_for_test") is _module_level_reward
