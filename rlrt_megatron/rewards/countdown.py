"""Grading Countdown answers: the boxed expression must use exactly the given numbers and equal
the target (`rlrt_megatron.data.countdown` writes the problems).

The response is untrusted: the boxed text is parsed with `ast` in ``eval`` mode and only integer
literals, ``+``, ``-``, ``*`` and brackets are accepted (anything else scores 0 as ``wrong``);
the multiset of literals is compared with the given numbers *before* anything is computed, so
the arithmetic is over a handful of small integers and cannot blow up.
"""

from __future__ import annotations

import ast
import re
from collections import Counter

from rlrt_megatron.rewards.math_verifier import CORRECT, NO_ANSWER, WRONG, Grade, extract_last_boxed

_MAX_EXPRESSION_CHARS = 64
_ALLOWED = re.compile(r"[0-9+\-*()]+")  # no 0x.., 1_0, 1e3: plain decimal literals only
_OPERATORS = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__}


def parse_ground_truth(ground_truth: str) -> tuple[int, tuple[int, ...]]:
    """``"22:3,5,7"`` → ``(22, (3, 5, 7))`` (the format `rlrt_megatron.data.countdown`'s
    ``format_ground_truth`` writes); ValueError naming the text if malformed."""
    target_text, sep, numbers_text = ground_truth.strip().partition(":")
    try:
        if not sep or not numbers_text:
            raise ValueError
        return int(target_text), tuple(int(n) for n in numbers_text.split(","))
    except ValueError:
        raise ValueError(
            f"countdown ground truth must look like '22:3,5,7', got {ground_truth!r}"
        ) from None


def _literals(node: ast.AST) -> list[int] | None:
    """The integer literals of an expression made only of ints, + - * and brackets, else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _literals(node.left), _literals(node.right)
        return None if left is None or right is None else left + right
    return None


def _value(node: ast.AST) -> int:
    if isinstance(node, ast.Constant):
        return int(node.value)
    assert isinstance(node, ast.BinOp)
    return _OPERATORS[type(node.op)](_value(node.left), _value(node.right))


def evaluate_countdown(expression: str, numbers: tuple[int, ...]) -> int | None:
    """The value of ``expression`` if it is a valid answer over ``numbers`` (each used exactly
    once; only + - * and brackets), else None."""
    text = expression.strip().replace("\\times", "*").replace("\\cdot", "*").replace(" ", "")
    if len(text) > _MAX_EXPRESSION_CHARS or not _ALLOWED.fullmatch(text):
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    literals = _literals(tree)
    if literals is None or Counter(literals) != Counter(numbers):
        return None
    return _value(tree)


def grade_countdown(response: str, ground_truth: str) -> Grade:
    """Score 1 iff the last ``\\boxed{}`` holds an expression over exactly the given numbers
    (each once; + - * and brackets) whose value is the target; no box scores 0 as ``no_answer``."""
    target, numbers = parse_ground_truth(ground_truth)
    answer = extract_last_boxed(response)
    if answer is None:
        return Grade(0.0, NO_ANSWER)
    return (
        Grade(1.0, CORRECT) if evaluate_countdown(answer, numbers) == target else Grade(0.0, WRONG)
    )


# The reward pool grades this once per new worker (its default item's ground truth, "1", is not a
# countdown ground truth).
grade_countdown.warmup_item = ("\\boxed{1+2}", "3:1,2")  # type: ignore[attr-defined]
