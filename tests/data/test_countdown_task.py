"""The Countdown task (`rlrt_megatron.data.countdown`): every problem is solvable, its recorded
solution count and worked solution are right (checked by brute force written here), and the
splits are deterministic and disjoint."""

from __future__ import annotations

import itertools
import random

import pytest

from rlrt_megatron.data.countdown import (
    bracket_free_values,
    generate_countdown,
    sample_problem,
    worked_solution,
    write_countdown_splits,
)
from rlrt_megatron.data.readers import read_jsonl
from rlrt_megatron.rewards.countdown import grade_countdown, parse_ground_truth


def _python_value(expression: str) -> int:
    # An independent evaluator for the test: Python's own precedence on a checked string.
    assert set(expression) <= set("0123456789+-*")
    return eval(expression)  # noqa: S307 (digits and + - * only, asserted above)


def test_bracket_free_values_enumerates_every_ordering_and_operator_choice():
    values = bracket_free_values((1, 2, 3))
    assert len(values) == 6 * 9  # 3! orderings x 3^2 operator choices, all distinct strings
    for expression, value in values.items():
        assert value == _python_value(expression)
    assert bracket_free_values((2, 2))["2*2"] == 4
    assert len(bracket_free_values((2, 2))) == 3  # the repeated number merges the orderings


@pytest.mark.parametrize("num_numbers", [2, 3, 4])
def test_problems_are_solvable_and_their_counts_and_solutions_are_right(num_numbers):
    rng = random.Random(7)
    for _ in range(30):
        p = sample_problem(rng, num_numbers=num_numbers, max_number=9)
        assert len(p.numbers) == num_numbers and all(1 <= n <= 9 for n in p.numbers)
        assert p.target >= 0
        reaching = {
            "".join(
                str(t) for t in itertools.chain.from_iterable(zip(order, ops + ("",), strict=True))
            )
            for order in itertools.permutations(p.numbers)
            for ops in itertools.product("+-*", repeat=num_numbers - 1)
        }
        reaching = {e for e in reaching if _python_value(e) == p.target}
        assert p.num_solutions == len(reaching) >= 1
        assert p.expression in reaching
        assert p.solution.endswith(f"= {p.target}. \\boxed{{{p.expression}}}")
        assert grade_countdown(p.solution, p.ground_truth).score == 1.0
        assert parse_ground_truth(p.ground_truth) == (p.target, p.numbers)
        assert p.question.startswith("Use ") and f"make {p.target}." in p.question


def test_worked_solution_reduces_multiplications_first():
    assert worked_solution("3+4*2-7") == "3+4*2-7 = 3+8-7 = 11-7 = 4. \\boxed{3+4*2-7}"


def test_generation_is_deterministic_distinct_and_rejects_bad_arguments():
    a = generate_countdown(200, seed=3)
    assert a == generate_countdown(200, seed=3)
    assert a != generate_countdown(200, seed=4)
    assert len({p.question for p in a}) == 200
    with pytest.raises(ValueError, match="num_numbers must be >= 2"):
        generate_countdown(1, seed=0, num_numbers=1)
    with pytest.raises(ValueError, match="could only draw"):
        generate_countdown(500, seed=0, num_numbers=2, max_number=2)


def test_splits_are_disjoint_and_read_back(tmp_path):
    train, test = write_countdown_splits(tmp_path, num_train=50, num_test=20, seed=0)
    train_rows, _ = read_jsonl(train)
    test_rows, _ = read_jsonl(test)
    assert len(train_rows) == 50 and len(test_rows) == 20
    assert not {r.question for r in train_rows} & {r.question for r in test_rows}
    row = train_rows[0]
    assert row.data_source == "synthetic_countdown" and row.extra["num_solutions"] >= 1
    assert grade_countdown(row.solution, row.ground_truth).score == 1.0
