"""The input lines of ``rlrt score`` (and of the analyses built on it), read and tokenized.

One rollout a line (jsonl; blank lines are skipped)::

    {"prompt": str, "response": str, "context": str | null}
    {"prompt_ids": [int], "response_ids": [int], "teacher_prompt_ids": [int] | null}

``prompt`` is rendered as one user message through the tokenizer's chat template (as-is with
``raw_prompt``); the teacher prompt is the same with the user message wrapped around ``context``
by ``teacher_template``. ``response`` is tokenized as plain text without special tokens. Text and
id fields may be mixed per part (e.g. ``prompt`` with ``response_ids``), except that ``context``
needs the prompt as text. Every line is checked (JSON, keys, empty response, ids within the
model's vocab, length within ``max_position_embeddings``) before any worker starts.

A library module (the command, `rlrt_megatron.megatron.score_command`, and
`rlrt_megatron.analysis.inputs` read rollouts with it), so that no library imports a command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrt_megatron.data.readers import json_lines
from rlrt_megatron.teacher.templates import PEER_TEMPLATE


@dataclass(frozen=True)
class ScoreRequest:
    """One input line, tokenized: the ids the model sees (1-D lists of ints)."""

    line: int  # 1-based line number in the input file (for messages)
    prompt_ids: list[int]
    response_ids: list[int]
    teacher_prompt_ids: list[int] | None


class ScoreInputError(ValueError):
    """An input line is malformed; the message names the file and the line."""


def _ids(value: Any, where: str, key: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ScoreInputError(f"{where}: {key!r} must be a list of integers")
    return list(value)


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ScoreInputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def parse_score_line(
    record: Any,
    where: str,
    line: int,
    tokenizer: Any,
    *,
    raw_prompt: bool = False,
    teacher_template: str = PEER_TEMPLATE,
) -> ScoreRequest:
    """Tokenize one decoded jsonl record (see the module docstring); ``where`` prefixes errors."""
    from rlrt_megatron.data.templating import encode_chat
    from rlrt_megatron.teacher.contexts import teacher_messages

    if not isinstance(record, dict):
        raise ScoreInputError(f"{where}: expected a JSON object, got {type(record).__name__}")

    def render(messages: list[dict[str, str]]) -> list[int]:
        if raw_prompt:
            return list(tokenizer.encode(messages[0]["content"], add_special_tokens=False))
        return encode_chat(tokenizer, messages)

    if "prompt_ids" in record:
        prompt_ids = _ids(record["prompt_ids"], where, "prompt_ids")
        prompt_text = None
    elif "prompt" in record:
        prompt_text = _text(record["prompt"], where, "prompt")
        prompt_ids = render([{"role": "user", "content": prompt_text}])
    else:
        raise ScoreInputError(f"{where}: missing key 'prompt' (or 'prompt_ids')")

    if "response_ids" in record:
        response_ids = _ids(record["response_ids"], where, "response_ids")
    elif "response" in record:
        response = _text(record["response"], where, "response")
        response_ids = list(tokenizer.encode(response, add_special_tokens=False))
    else:
        raise ScoreInputError(f"{where}: missing key 'response' (or 'response_ids')")
    if not response_ids:
        raise ScoreInputError(f"{where}: empty response (nothing to score)")
    if not prompt_ids:
        raise ScoreInputError(f"{where}: empty prompt")

    teacher_ids: list[int] | None = None
    context = record.get("context")
    if record.get("teacher_prompt_ids") is not None:
        if context is not None:
            raise ScoreInputError(f"{where}: give 'context' or 'teacher_prompt_ids', not both")
        teacher_ids = _ids(record["teacher_prompt_ids"], where, "teacher_prompt_ids")
        if not teacher_ids:
            raise ScoreInputError(f"{where}: empty 'teacher_prompt_ids'")
    elif context is not None:
        context = _text(context, where, "context")
        if prompt_text is None:
            raise ScoreInputError(
                f"{where}: 'context' needs the prompt as text ('prompt'); with 'prompt_ids' give "
                "the teacher prompt as 'teacher_prompt_ids'"
            )
        try:
            messages = teacher_messages(
                [{"role": "user", "content": prompt_text}], context, teacher_template
            )
        except (ValueError, KeyError, IndexError) as error:
            raise ScoreInputError(f"{where}: cannot build the teacher prompt: {error}") from None
        teacher_ids = render(messages)
    return ScoreRequest(line, prompt_ids, response_ids, teacher_ids)


def load_score_requests(
    path: str | Path,
    tokenizer: Any,
    *,
    vocab_size: int,
    max_positions: int,
    raw_prompt: bool = False,
    teacher_template: str = PEER_TEMPLATE,
) -> list[ScoreRequest]:
    """Read and tokenize every line of ``path``; raise :class:`ScoreInputError` naming
    ``path:line`` for the first bad one (ids outside ``[0, vocab_size)``, a prompt+response
    longer than ``max_positions``, ...)."""
    path = Path(path)
    requests = []
    for where, number, record in json_lines(path, ScoreInputError):
        request = parse_score_line(
            record,
            where,
            number,
            tokenizer,
            raw_prompt=raw_prompt,
            teacher_template=teacher_template,
        )
        parts = {"prompt": request.prompt_ids, "response": request.response_ids}
        if request.teacher_prompt_ids is not None:
            parts["teacher prompt"] = request.teacher_prompt_ids
        for what, ids in parts.items():
            bad = [i for i in ids if not 0 <= i < vocab_size]
            if bad:
                raise ScoreInputError(
                    f"{where}: {what} has token id {bad[0]} outside the vocabulary [0, "
                    f"{vocab_size})"
                )
        for what, prefix in parts.items():
            if what == "response":
                continue
            total = len(prefix) + len(request.response_ids)
            if total > max_positions:
                raise ScoreInputError(
                    f"{where}: {what} + response is {total} tokens, longer than the model's "
                    f"max_position_embeddings {max_positions}"
                )
        requests.append(request)
    if not requests:
        raise ScoreInputError(f"{path} has no rollouts (it is empty)")
    return requests
