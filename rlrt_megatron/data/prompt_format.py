r"""Prompt formats: rewriting a dataset's answer-format instruction before chat templating.

DAPO-Math-17k (BytedTsinghua-SIA/DAPO-Math-17k, the paper's training set) wraps every problem in
an instruction asking for a last line ``Answer: $Answer``::

    Solve the following math problem step by step. The last line of your response should be of
    the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.

    {problem}

    Remember to put your answer on its own line after "Answer:".

The paper's base code instead asks for the final answer "... within \boxed{}" and grades the last
``\boxed{}`` (this project's ``reward: math``). ``data.prompt_format`` says which the policy sees:

``raw``
    the dataset's prompt as it is (default; pair DAPO prompts with ``reward: math_dapo``, which
    also reads the ``Answer:`` line).
``boxed``
    DAPO's instruction replaced by `BOXED_INSTRUCTION` after the problem:
    ``{problem}\n\nPlease reason step by step, and put your final answer within \boxed{}.``
    The paper quotes only the phrase "put your final answer within \boxed{}"; the full sentence
    (the Qwen2.5-Math chain-of-thought instruction, which ends with that phrase) is this project's
    choice. Only the exact DAPO wrapping (`DAPO_PREFIX` + problem + `DAPO_SUFFIX`, whitespace
    included) is rewritten: any other last user message is a bad row (`PromptFormatError`, which
    the reader's ``on_bad_row`` raises or skips and counts), never guessed at, so a file that is
    not DAPO-Math-17k cannot silently train on a half-rewritten prompt.

Only the last user message changes; system messages and the other fields stay as they are.
"""

from __future__ import annotations

import typing
from dataclasses import replace
from typing import Literal

from rlrt_megatron.data.records import PromptRecord

PromptFormat = Literal["raw", "boxed"]
PROMPT_FORMATS: tuple[str, ...] = typing.get_args(PromptFormat)

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class PromptFormatError(ValueError):
    """A prompt that the requested format cannot rewrite; the message says what was expected."""


def dapo_problem(text: str) -> str:
    """The problem inside a DAPO-Math-17k prompt (`DAPO_PREFIX` + problem + `DAPO_SUFFIX`).

    Raises `PromptFormatError` naming the part that does not match.
    """
    if not text.startswith(DAPO_PREFIX):
        raise PromptFormatError(
            f"does not start with DAPO-Math-17k's instruction {DAPO_PREFIX[:48]!r}... "
            f"(starts with {text[:48]!r})"
        )
    if not text.endswith(DAPO_SUFFIX):
        raise PromptFormatError(
            f"does not end with DAPO-Math-17k's reminder {DAPO_SUFFIX!r} (ends with {text[-48:]!r})"
        )
    problem = text[len(DAPO_PREFIX) : len(text) - len(DAPO_SUFFIX)]
    if not problem.strip():
        raise PromptFormatError("has DAPO-Math-17k's instruction but no problem between its parts")
    return problem


def boxed_prompt(text: str) -> str:
    """A DAPO-Math-17k prompt rewritten to ask for ``\\boxed{}``: problem, blank line,
    `BOXED_INSTRUCTION`."""
    return f"{dapo_problem(text)}\n\n{BOXED_INSTRUCTION}"


def format_prompt_text(text: str, prompt_format: str) -> str:
    """The user message ``text`` in ``prompt_format`` (``raw`` returns it unchanged)."""
    if prompt_format == "raw":
        return text
    if prompt_format == "boxed":
        return boxed_prompt(text)
    raise ValueError(f"data.prompt_format must be one of {PROMPT_FORMATS}, not {prompt_format!r}")


def apply_prompt_format(record: PromptRecord, prompt_format: str) -> PromptRecord:
    """``record`` with its last user message rewritten to ``prompt_format``.

    Raises `PromptFormatError` (the caller adds file and row) when the message cannot be rewritten.
    """
    if prompt_format == "raw":
        return record
    messages = [dict(m) for m in record.prompt]
    for message in reversed(messages):
        if message["role"] == "user":
            message["content"] = format_prompt_text(message["content"], prompt_format)
            return replace(record, prompt=messages)
    raise PromptFormatError("has no user message")
