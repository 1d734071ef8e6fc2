"""A synthetic search task where exploration matters: Countdown ("reach T with these numbers").

Each problem gives a few small integers and a target; a solution is any expression that uses
every given number exactly once with ``+``, ``-`` and ``*`` (usual precedence, brackets allowed)
and equals the target::

    Use 3, 5, 7 once each with + - * to make 22. Put the expression in \\boxed{}.
    3*5+7 = 15+7 = 22. \\boxed{3*5+7}

Why this task for the paper's claims in miniature (its exploration argument, §6.4–6.5): there
are several valid solution paths per problem (orderings and operator choices), success is sparse
for a model that has only learned the format, and sampling many times finds a solution far more
often than sampling once (pass@64 ≫ pass@1), which is where a method that rewards off-teacher
choices could show. ``benchmarks/miniature_feasibility.py`` measures that on the warmed-up model.

Targets are the values of random bracket-free expressions over the numbers (so every problem
is solvable), drawn afresh per problem; each problem records how many of the bracket-free
expressions reach its target (``num_solutions``). The worked solution shown for SFT is one of
those, drawn uniformly, so the warm-up data covers several paths per target rather than one
canonical answer. The grader is `rlrt_megatron.rewards.countdown.grade_countdown` (math-verify
cannot check which numbers an expression uses, so the check is exact integer arithmetic).

Everything is deterministic from the seed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlrt_megatron.data.readers import write_jsonl
from rlrt_megatron.data.synthetic import draw_distinct, reduce_steps

QUESTION_TEMPLATE = (
    "Use {numbers} once each with + - * to make {target}. Put the expression in \\boxed{{}}."
)
DATA_SOURCE = "synthetic_countdown"
OPERATORS = "+-*"


def format_ground_truth(numbers: Sequence[int], target: int) -> str:
    """The ``answer`` column: ``"<target>:<n1>,<n2>,..."``. The grader parses it back
    (`rlrt_megatron.rewards.countdown.parse_ground_truth`; rewards and data are one layer, so
    neither imports the other; tests check the round trip)."""
    return f"{target}:" + ",".join(str(n) for n in numbers)


def _tokens(numbers: Sequence[int], ops: Sequence[str]) -> list[int | str]:
    tokens: list[int | str] = [numbers[0]]
    for op, n in zip(ops, numbers[1:], strict=True):
        tokens += [op, n]
    return tokens


def bracket_free_values(numbers: Sequence[int]) -> dict[str, int]:
    """Every bracket-free expression over an ordering of ``numbers`` → its value.

    ``len(numbers)! · 3^(len-1)`` candidates (54 for three numbers) before duplicates from
    repeated numbers are merged.
    """
    values: dict[str, int] = {}
    for order in itertools.permutations(numbers):
        for ops in itertools.product(OPERATORS, repeat=len(numbers) - 1):
            tokens = _tokens(order, ops)
            value = reduce_steps(tokens)[-1][0]
            assert isinstance(value, int)
            values["".join(str(t) for t in tokens)] = value
    return values


@dataclass(frozen=True)
class CountdownProblem:
    """One problem: the numbers, the target, a worked solution and how many solutions exist."""

    numbers: tuple[int, ...]
    target: int
    expression: str
    """The expression the worked solution uses (one of the valid ones)."""
    solution: str
    num_solutions: int
    """Distinct bracket-free expressions that reach the target (bracketed ones may add more)."""

    @property
    def question(self) -> str:
        return QUESTION_TEMPLATE.format(
            numbers=", ".join(str(n) for n in self.numbers), target=self.target
        )

    @property
    def ground_truth(self) -> str:
        return format_ground_truth(self.numbers, self.target)

    def to_row(self) -> dict[str, object]:
        """The jsonl row `rlrt_megatron.data.read_jsonl` reads (extra keys land in ``extra``)."""
        return {
            "prompt": self.question,
            "answer": self.ground_truth,
            "solution": self.solution,
            "num_solutions": self.num_solutions,
            "data_source": DATA_SOURCE,
        }


def worked_solution(expression: str) -> str:
    """``"3*5+7 = 15+7 = 22. \\boxed{3*5+7}"``: one reduction per step, as the arithmetic task."""
    tokens: list[int | str] = []
    number = ""
    for ch in expression:
        if ch.isdigit():
            number += ch
        else:
            tokens += [int(number), ch]
            number = ""
    tokens.append(int(number))
    steps = reduce_steps(tokens)
    chain = " = ".join("".join(str(t) for t in s) for s in steps)
    return f"{chain}. \\boxed{{{expression}}}"


def sample_problem(
    rng: random.Random, *, num_numbers: int = 3, max_number: int = 9
) -> CountdownProblem:
    """Draw numbers from [1, max_number] and a non-negative target reached by one of their
    bracket-free expressions; the shown solution is drawn uniformly among those reaching it."""
    if num_numbers < 2:
        raise ValueError(f"num_numbers must be >= 2, got {num_numbers}")
    if max_number < 1:
        raise ValueError(f"max_number must be >= 1, got {max_number}")
    while True:
        numbers = tuple(rng.randint(1, max_number) for _ in range(num_numbers))
        values = bracket_free_values(numbers)
        candidates = sorted(values)
        target = values[rng.choice(candidates)]
        if target < 0:  # keep targets natural numbers (a "make -4" puzzle reads oddly)
            continue
        solutions = sorted(e for e, v in values.items() if v == target)
        expression = rng.choice(solutions)
        return CountdownProblem(
            numbers=numbers,
            target=target,
            expression=expression,
            solution=worked_solution(expression),
            num_solutions=len(solutions),
        )


def generate_countdown(
    num_problems: int, *, seed: int, num_numbers: int = 3, max_number: int = 9
) -> list[CountdownProblem]:
    """``num_problems`` distinct problems (no repeated (numbers, target) pair); deterministic."""
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    rng = random.Random(seed)
    problems = draw_distinct(
        lambda: sample_problem(rng, num_numbers=num_numbers, max_number=max_number),
        lambda p: p.question,
        num_problems,
    )
    if len(problems) < num_problems:
        raise ValueError(
            f"could only draw {len(problems)} distinct countdown problems with {num_numbers} "
            f"numbers up to {max_number}; asked for {num_problems} (raise max_number)"
        )
    return problems


def write_countdown_splits(
    out_dir: str | Path,
    *,
    num_train: int,
    num_test: int,
    seed: int,
    num_numbers: int = 3,
    max_number: int = 9,
) -> tuple[Path, Path]:
    """Disjoint ``train.jsonl`` and ``test.jsonl`` under ``out_dir``; returns both paths."""
    problems = generate_countdown(
        num_train + num_test, seed=seed, num_numbers=num_numbers, max_number=max_number
    )
    out_dir = Path(out_dir)
    train = write_jsonl(out_dir / "train.jsonl", [p.to_row() for p in problems[:num_train]])
    test = write_jsonl(out_dir / "test.jsonl", [p.to_row() for p in problems[num_train:]])
    return train, test
