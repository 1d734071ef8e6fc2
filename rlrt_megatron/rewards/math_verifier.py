"""Math answer grading with math-verify: extract the final answer, compare symbolically.

The response is untrusted model output: it is only scanned as text and handed to math-verify's
LaTeX/sympy parser, never evaluated as code. These functions run inside the reward pool's worker
processes (`rlrt_megatron.rewards.pool`), which enforce the time limit by killing the process;
math-verify's own ``signal.alarm`` timeouts are therefore switched off (they cannot interrupt
long C-level arithmetic and do not work off the main thread).
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

# Statuses a grade can carry; the pool adds "timeout" (killed) and "error" (grader raised).
CORRECT, WRONG, NO_ANSWER, TIMEOUT, ERROR = "correct", "wrong", "no_answer", "timeout", "error"
STATUSES = (CORRECT, WRONG, NO_ANSWER, TIMEOUT, ERROR)

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# DAPO-Math-17k's prompt asks for a last line "Answer: $Answer"; verl's math_dapo reads it.
_ANSWER_LINE = re.compile(r"^\s*\**Answer\s*\**\s*:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)


class Grade(NamedTuple):
    """One graded response: ``score`` in {0.0, 1.0} and a status from `STATUSES`."""

    score: float
    status: str


def extract_last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Handles nested and escaped braces (``\\{``, ``\\}``) and the brace-less ``\\boxed 5``. A
    truncated final box (the generation hit its length limit inside it) is skipped in favour of
    the previous complete one. Returns None when there is none; the content may be empty.

    One linear pass with a brace stack: the text is untrusted and may hold thousands of
    unterminated boxes, so rescanning from every ``\\boxed`` (quadratic) is not an option.
    """
    best_start, best = -1, None
    opener_of: dict[int, int] = {}  # position of a box's "{" -> start of its command
    for match in _BOX_COMMAND.finditer(text):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            opener_of[i] = match.start()
        elif match.end() < i < len(text):  # "\boxed 5": the argument is the next word
            end = i
            while end < len(text) and not text[end].isspace() and text[end] != "$":
                end += 1
            if match.start() > best_start:
                best_start, best = match.start(), text[i:end]
    stack: list[int] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped character (\{ \} \\) neither opens nor closes a group
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            opened = stack.pop()
            start = opener_of.get(opened)
            if start is not None and start > best_start:
                best_start, best = start, text[opened + 1 : i]
        i += 1
    return best


def extract_answer_line(text: str) -> str | None:
    """The answer of the last ``Answer: ...`` line (DAPO's prompt format), ``$`` stripped."""
    matches = _ANSWER_LINE.findall(text)
    if not matches:
        return None
    return matches[-1].strip().strip("$").strip()


@functools.lru_cache(maxsize=4096)
def _parse_gold(ground_truth: str) -> tuple[Any, ...]:
    # The same ground truth is graded K times per step (one per rollout): parse it once.
    from math_verify import parse

    boxed = extract_last_boxed(ground_truth)
    answer = boxed if boxed is not None else ground_truth
    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=None))


def verify_answer(answer: str, ground_truth: str) -> Grade:
    """Compare an extracted answer with the ground truth by math-verify (symbolic equivalence)."""
    from math_verify import parse, verify

    if not answer.strip():
        return Grade(0.0, NO_ANSWER)
    gold = _parse_gold(ground_truth)
    if not gold:
        raise ValueError(f"math-verify cannot parse the ground truth {ground_truth!r}")
    pred = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    if not pred:  # an answer math-verify cannot read is a wrong answer, not a missing one
        return Grade(0.0, WRONG)
    if verify(list(gold), pred, timeout_seconds=None):
        return Grade(1.0, CORRECT)
    return Grade(0.0, WRONG)


def grade_math(response: str, ground_truth: str) -> Grade:
    """Score 1 iff the response's last ``\\boxed{}`` answer is equivalent to ``ground_truth``.

    ``\\boxed{\\frac{1}{2}}`` matches ``0.5``; a response without a box scores 0 as ``no_answer``.
    """
    answer = extract_last_boxed(response)
    if answer is None:
        return Grade(0.0, NO_ANSWER)
    return verify_answer(answer, ground_truth)


def grade_math_dapo(response: str, ground_truth: str) -> Grade:
    """Like `grade_math`, falling back to the last ``Answer: ...`` line (DAPO's prompt format)."""
    answer = extract_last_boxed(response)
    if answer is None:
        answer = extract_answer_line(response)
    if answer is None:
        return Grade(0.0, NO_ANSWER)
    return verify_answer(answer, ground_truth)
