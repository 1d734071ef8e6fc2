"""Chat templating through a real Hugging Face tokenizer, and the prompt-length filter."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from rlrt_megatron.data import (
    PromptRecord,
    encode_chat,
    filter_by_prompt_length,
    render_chat,
)

# Qwen3's handling of `enable_thinking` (an empty think block pre-filled when thinking is off),
# reduced to plain chat turns.
QWEN3_THINKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from rlrt_megatron.models.tiny import build_tokenizer

    out_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tokenizer(out_dir)
    return AutoTokenizer.from_pretrained(str(out_dir))


MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Compute 3+4*2. Put your final answer in \\boxed{}."},
]


def test_render_chat_uses_the_tokenizer_template(tokenizer) -> None:
    text = render_chat(tokenizer, MESSAGES)
    assert text == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nCompute 3+4*2. Put your final answer in \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # The tiny template accepts and ignores enable_thinking, like Qwen3 instruct templates.
    assert render_chat(tokenizer, MESSAGES, enable_thinking=False) == text


def test_encode_chat_matches_the_tokenizer(tokenizer) -> None:
    ids = encode_chat(tokenizer, MESSAGES)
    expected = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == expected
    # Chat markers are single special tokens, not spelled out byte by byte.
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(im_start) == 3


def test_enable_thinking_reaches_the_template(tokenizer) -> None:
    original = tokenizer.chat_template
    tokenizer.chat_template = QWEN3_THINKING_TEMPLATE
    try:
        off = render_chat(tokenizer, MESSAGES, enable_thinking=False)
        on = render_chat(tokenizer, MESSAGES, enable_thinking=True)
        default = render_chat(tokenizer, MESSAGES)
    finally:
        tokenizer.chat_template = original
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n") and on == default


def test_render_chat_errors(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"key 'messages\[0\].role'"):
        render_chat(tokenizer, [{"role": "robot", "content": "hi"}])
    original = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(ValueError, match="has no chat_template"):
            render_chat(tokenizer, MESSAGES)
    finally:
        tokenizer.chat_template = original


def _record(question: str, index: int) -> PromptRecord:
    return PromptRecord(
        prompt=[{"role": "user", "content": question}], ground_truth="1", index=index
    )


def test_length_filter_with_chat_template(tokenizer) -> None:
    records = [
        _record("Compute " + "+".join(["1"] * n) + ".", i) for i, n in enumerate([1, 5, 20, 60])
    ]
    render = functools.partial(render_chat, tokenizer)
    lengths = [len(tokenizer.encode(render(r.prompt), add_special_tokens=False)) for r in records]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    encode = functools.partial(tokenizer.encode, add_special_tokens=False)
    kept, dropped = filter_by_prompt_length(records, encode, lengths[1], render=render)
    assert [r.index for r in kept] == [0, 1] and dropped == 2
    kept, dropped = filter_by_prompt_length(records, encode, lengths[-1], render=render)
    assert len(kept) == 4 and dropped == 0


def test_length_filter_default_render_and_errors() -> None:
    records = [_record("one two three", 0), _record("one two three four five", 1)]

    def encode(text: str) -> list[str]:
        return text.split()

    kept, dropped = filter_by_prompt_length(records, encode, 3)
    assert [r.index for r in kept] == [0] and dropped == 1
    with pytest.raises(ValueError, match="max_prompt_tokens must be a positive int"):
        filter_by_prompt_length(records, encode, 0)


def test_question_property_and_missing_user(tmp_path: Path) -> None:
    record = PromptRecord(
        prompt=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "second"},
        ],
        ground_truth="1",
    )
    assert record.question == "second"
    with pytest.raises(ValueError, match="has no user message"):
        _ = PromptRecord(prompt=[{"role": "system", "content": "s"}], ground_truth="1").question
