"""The synthetic arithmetic task: determinism, answers recomputed independently, splits, files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlrt_megatron.data import read_jsonl
from rlrt_megatron.data.synthetic import (
    LEVELS,
    generate_problems,
    make_problem,
    split_problems,
    write_arithmetic_splits,
)
from rlrt_megatron.rewards import extract_last_boxed, grade_math

EXPRESSION = re.compile(r"^-?\d+(?:[+\-*]\d+)*$")
SOLUTION = re.compile(r"^(?:-?\d+(?:[+\-*]\d+)*)(?: = -?\d+(?:[+\-*]\d+)*)*\. \\boxed\{-?\d+\}$")


def _independent_value(expression: str) -> int:
    """Python's own precedence rules on a string that is only digits and + - * (checked)."""
    assert EXPRESSION.fullmatch(expression), expression
    return eval(expression, {"__builtins__": {}}, {})  # noqa: S307 - digits and + - * only


def test_known_example() -> None:
    problem = make_problem([3, "+", 4, "*", 2, "-", 7], level=3)
    assert problem.expression == "3+4*2-7"
    assert problem.solution == "3+4*2-7 = 3+8-7 = 11-7 = 4. \\boxed{4}"
    assert problem.answer == 4
    assert problem.question == "Compute 3+4*2-7. Put your final answer in \\boxed{}."


def test_deterministic_from_seed() -> None:
    a = generate_problems(40, seed=5, levels=(1, 2, 3, 4, 5))
    b = generate_problems(40, seed=5, levels=(1, 2, 3, 4, 5))
    c = generate_problems(40, seed=6, levels=(1, 2, 3, 4, 5))
    assert a == b
    assert [p.expression for p in a] != [p.expression for p in c]


def test_answers_and_every_step_recomputed() -> None:
    problems = generate_problems(300, seed=0, levels=tuple(LEVELS))
    assert len({p.expression for p in problems}) == 300
    assert {p.level for p in problems} == set(LEVELS)
    for p in problems:
        spec = LEVELS[p.level]
        operands = [int(x) for x in re.split(r"[+\-*]", p.expression)]
        assert len(operands) == spec.num_ops + 1
        assert all(0 <= x <= spec.max_operand for x in operands)
        assert set(re.findall(r"[+\-*]", p.expression)) <= set(spec.ops)
        assert p.answer == _independent_value(p.expression)
        assert SOLUTION.fullmatch(p.solution), p.solution
        chain, boxed = p.solution.rsplit(". ", 1)
        steps = chain.split(" = ")
        assert steps[0] == p.expression and len(steps) == spec.num_ops + 1
        # Every intermediate expression keeps the value; each step removes one operation.
        assert all(_independent_value(s) == p.answer for s in steps)
        assert boxed == f"\\boxed{{{p.answer}}}"
        assert extract_last_boxed(p.solution) == str(p.answer)


def test_solutions_grade_as_correct() -> None:
    for p in generate_problems(10, seed=2, levels=(2, 4)):
        assert grade_math(p.solution, str(p.answer)).status == "correct"
        assert grade_math(p.solution, str(p.answer + 1)).status == "wrong"


def test_splits_are_disjoint_and_written(tmp_path: Path) -> None:
    train, test = split_problems(120, 30, seed=4)
    assert len(train) == 120 and len(test) == 30
    assert not {p.expression for p in train} & {p.expression for p in test}

    train_path, test_path = write_arithmetic_splits(tmp_path, num_train=120, num_test=30, seed=4)
    train_records, stats = read_jsonl(train_path)
    test_records, _ = read_jsonl(test_path)
    assert stats.num_bad == 0 and len(train_records) == 120 and len(test_records) == 30
    for record, problem in zip(train_records, train, strict=True):
        assert record.prompt == [{"role": "user", "content": problem.question}]
        assert record.ground_truth == str(problem.answer)
        assert record.solution == problem.solution
        assert record.extra == {"level": problem.level}
        assert record.data_source == "synthetic_arithmetic"


def test_errors() -> None:
    with pytest.raises(ValueError, match="could only draw 200 distinct problems"):
        generate_problems(250, seed=0, levels=(1,))
    with pytest.raises(ValueError, match="unknown level 9"):
        generate_problems(5, seed=0, levels=(9,))
    with pytest.raises(ValueError, match="alternate operand/operator"):
        make_problem([1, "+"], level=1)
