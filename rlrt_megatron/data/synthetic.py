"""A synthetic verifiable task: multi-step integer arithmetic with ``\\boxed{}`` answers.

Problems are expressions like ``3+4*2-7`` over non-negative integer operands with the usual
precedence (``*`` before ``+``/``-``, left to right). Difficulty levels set the number of
operations, the operand range and the operators. Each problem carries a worked solution that
reduces one operation per step, multiplications first, in a short regular format a tiny model can
learn by SFT::

    3+4*2-7 = 3+8-7 = 11-7 = 4. \\boxed{4}

Everything is deterministic from the seed, and the answer is computed by the same step-by-step
reduction the solution shows (tests recompute it independently).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rlrt_megatron.data.readers import write_jsonl

T = TypeVar("T")


@dataclass(frozen=True)
class Level:
    """One difficulty level."""

    num_ops: int
    """Number of binary operations in the expression."""
    max_operand: int
    """Operands are drawn uniformly from [0, max_operand]."""
    ops: str
    """The operators to draw from (a subset of ``"+-*"``)."""


LEVELS: dict[int, Level] = {
    1: Level(num_ops=1, max_operand=9, ops="+-"),
    2: Level(num_ops=2, max_operand=9, ops="+-*"),
    3: Level(num_ops=3, max_operand=20, ops="+-*"),
    4: Level(num_ops=4, max_operand=50, ops="+-*"),
    5: Level(num_ops=5, max_operand=99, ops="+-*"),
}
QUESTION_TEMPLATE = "Compute {expression}. Put your final answer in \\boxed{{}}."


@dataclass(frozen=True)
class ArithmeticProblem:
    """One problem: the expression, its question text, answer, worked solution and level."""

    expression: str
    question: str
    answer: int
    solution: str
    level: int

    def to_row(self) -> dict[str, object]:
        """The jsonl row `rlrt_megatron.data.read_jsonl` reads (``level`` lands in ``extra``)."""
        return {
            "prompt": self.question,
            "answer": str(self.answer),
            "solution": self.solution,
            "level": self.level,
            "data_source": "synthetic_arithmetic",
        }


def _render(tokens: Sequence[int | str]) -> str:
    return "".join(str(t) for t in tokens)


def reduce_steps(tokens: Sequence[int | str]) -> list[list[int | str]]:
    """All intermediate token lists from the expression down to a single integer.

    ``tokens`` alternates operands (int) and operators (str). Each step applies one operation:
    the leftmost ``*`` while any remain, then the leftmost ``+``/``-``, so every step respects
    precedence and left-to-right associativity.
    """
    if len(tokens) % 2 != 1:
        raise ValueError(f"tokens must alternate operand/operator, got {list(tokens)}")
    steps = [list(tokens)]
    current = list(tokens)
    while len(current) > 1:
        ops = current[1::2]
        k = ops.index("*") if "*" in ops else 0
        left, op, right = current[2 * k], current[2 * k + 1], current[2 * k + 2]
        assert isinstance(left, int) and isinstance(right, int)
        if op == "*":
            value = left * right
        elif op == "+":
            value = left + right
        elif op == "-":
            value = left - right
        else:
            raise ValueError(f"unknown operator {op!r}")
        current = current[: 2 * k] + [value] + current[2 * k + 3 :]
        steps.append(current)
    return steps


def make_problem(tokens: Sequence[int | str], level: int) -> ArithmeticProblem:
    """Build the problem, answer and worked solution of one expression."""
    steps = reduce_steps(tokens)
    answer = steps[-1][0]
    assert isinstance(answer, int)
    expression = _render(steps[0])
    solution = " = ".join(_render(s) for s in steps) + f". \\boxed{{{answer}}}"
    return ArithmeticProblem(
        expression=expression,
        question=QUESTION_TEMPLATE.format(expression=expression),
        answer=answer,
        solution=solution,
        level=level,
    )


def sample_problem(rng: random.Random, level: int) -> ArithmeticProblem:
    """Draw one problem of ``level`` from ``rng``."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; levels are {sorted(LEVELS)}")
    spec = LEVELS[level]
    tokens: list[int | str] = [rng.randint(0, spec.max_operand)]
    for _ in range(spec.num_ops):
        tokens += [rng.choice(spec.ops), rng.randint(0, spec.max_operand)]
    return make_problem(tokens, level)


def draw_distinct(draw: Callable[[], T], key: Callable[[T], str], count: int) -> list[T]:
    """Up to ``count`` draws with distinct ``key``, in draw order, giving up after
    ``50 · count + 1000`` draws (the caller reports a shortfall in its own terms)."""
    seen: set[str] = set()
    items: list[T] = []
    for _ in range(50 * count + 1000):
        if len(items) == count:
            break
        item = draw()
        if key(item) not in seen:
            seen.add(key(item))
            items.append(item)
    return items


def generate_problems(
    num_problems: int, *, seed: int, levels: Sequence[int] = (1, 2, 3)
) -> list[ArithmeticProblem]:
    """``num_problems`` distinct problems (no repeated expression), each level drawn uniformly.

    Deterministic: the same arguments always give the same list.
    """
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    if not levels:
        raise ValueError("levels must not be empty")
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level}; levels are {sorted(LEVELS)}")
    rng = random.Random(seed)
    # Duplicates are rejected, so a small level (level 1 has 200 expressions) can run dry.
    problems = draw_distinct(
        lambda: sample_problem(rng, rng.choice(list(levels))),
        lambda p: p.expression,
        num_problems,
    )
    if len(problems) < num_problems:
        raise ValueError(
            f"could only draw {len(problems)} distinct problems of levels {list(levels)}; "
            f"asked for {num_problems} (add harder levels)"
        )
    return problems


def split_problems(
    num_train: int, num_test: int, *, seed: int, levels: Sequence[int] = (1, 2, 3)
) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """Disjoint train and held-out problem lists (no expression appears in both)."""
    problems = generate_problems(num_train + num_test, seed=seed, levels=levels)
    return problems[:num_train], problems[num_train:]


def write_arithmetic_splits(
    out_dir: str | Path,
    *,
    num_train: int,
    num_test: int,
    seed: int,
    levels: Sequence[int] = (1, 2, 3),
) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` under ``out_dir``; returns both paths."""
    train, test = split_problems(num_train, num_test, seed=seed, levels=levels)
    out_dir = Path(out_dir)
    train_path = write_jsonl(out_dir / "train.jsonl", [p.to_row() for p in train])
    test_path = write_jsonl(out_dir / "test.jsonl", [p.to_row() for p in test])
    return train_path, test_path
