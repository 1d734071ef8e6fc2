"""Chat templating with the model's own template, and the prompt-length filter.

The prompt a policy sees must be exactly what its tokenizer's chat template renders (Qwen3's
template differs between base, instruct and thinking checkpoints), so rendering always goes
through ``tokenizer.apply_chat_template`` rather than a hand-written format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rlrt_megatron.data.records import PromptRecord, validate_messages


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    enable_thinking: bool | None = None,
) -> str:
    """The prompt text the model is conditioned on: the chat template plus the assistant header.

    ``tokenizer`` is a Hugging Face tokenizer with a chat template. ``enable_thinking`` is passed
    to the template only when given (Qwen3 thinking checkpoints read it; other templates ignore
    extra variables).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat_template; base-model prompts need "
            "one (set tokenizer.chat_template or use a checkpoint that ships one)"
        )
    clean = validate_messages(list(messages), "messages")
    kwargs: dict[str, Any] = {}
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    text = tokenizer.apply_chat_template(
        clean, tokenize=False, add_generation_prompt=True, **kwargs
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def encode_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    enable_thinking: bool | None = None,
) -> list[int]:
    """Token ids of `render_chat`'s text; no extra BOS/EOS (the template already has its tokens)."""
    text = render_chat(tokenizer, messages, enable_thinking=enable_thinking)
    return list(tokenizer.encode(text, add_special_tokens=False))


def join_contents(messages: Sequence[dict[str, str]]) -> str:
    """The messages' contents joined by newlines: a template-free text for length estimates."""
    return "\n".join(m["content"] for m in messages)


def filter_by_prompt_length(
    records: Sequence[PromptRecord],
    encode: Callable[[str], Sequence[int]],
    max_prompt_tokens: int,
    *,
    render: Callable[[Sequence[dict[str, str]]], str] = join_contents,
) -> tuple[list[PromptRecord], int]:
    """Keep the records whose rendered prompt has at most ``max_prompt_tokens`` tokens.

    ``encode`` maps text to token ids (``len(encode(text))`` is the length); ``render`` maps the
    messages to the text that is measured — pass ``functools.partial(render_chat, tokenizer)``
    to count exactly what the policy will see. Returns ``(kept, num_dropped)``.
    """
    if not isinstance(max_prompt_tokens, int) or max_prompt_tokens <= 0:
        raise ValueError(f"max_prompt_tokens must be a positive int, got {max_prompt_tokens!r}")
    kept = [r for r in records if len(encode(render(r.prompt))) <= max_prompt_tokens]
    return kept, len(records) - len(kept)
