r"""`data.prompt_format`: DAPO-Math-17k's "Answer:" instruction rewritten to ask for \boxed{}."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlrt_megatron.data import PromptRecord
from rlrt_megatron.data.prompt_format import (
    PromptFormatError,
    apply_prompt_format,
    boxed_prompt,
    dapo_problem,
    format_prompt_text,
)

# A DAPO-Math-17k prompt, typed out from the dataset's form (not built from the module's constants).
DAPO_TEXT = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
    "Let $x$ satisfy $2x + 3 = 11$.\n\nFind $x^2$.\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
BOXED_TEXT = (
    "Let $x$ satisfy $2x + 3 = 11$.\n\nFind $x^2$.\n\n"
    "Please reason step by step, and put your final answer within \\boxed{}."
)


def test_dapo_prompt_becomes_the_boxed_prompt() -> None:
    assert dapo_problem(DAPO_TEXT) == "Let $x$ satisfy $2x + 3 = 11$.\n\nFind $x^2$."
    assert boxed_prompt(DAPO_TEXT) == BOXED_TEXT
    assert format_prompt_text(DAPO_TEXT, "boxed") == BOXED_TEXT
    assert format_prompt_text(DAPO_TEXT, "raw") == DAPO_TEXT


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("What is 3+4? Put your final answer within \\boxed{}.", "does not start with DAPO"),
        (DAPO_TEXT.removesuffix('"Answer:".') + "Answer:.", "does not end with DAPO"),
        # One space instead of the blank line after the instruction: not the exact form.
        (DAPO_TEXT.replace("problem.\n\n", "problem. ", 1), "does not start with DAPO"),
        (
            DAPO_TEXT[: DAPO_TEXT.index("Let")] + DAPO_TEXT[DAPO_TEXT.index("\n\nRemember") :],
            "no problem",
        ),
    ],
)
def test_anything_but_the_exact_dapo_form_is_refused(text: str, match: str) -> None:
    with pytest.raises(PromptFormatError, match=match):
        boxed_prompt(text)


def test_unknown_format_names_the_key() -> None:
    with pytest.raises(ValueError, match="data.prompt_format must be one of"):
        format_prompt_text(DAPO_TEXT, "answer_line")


def test_only_the_last_user_message_changes() -> None:
    record = PromptRecord(
        prompt=[
            {"role": "system", "content": "Be careful."},
            {"role": "user", "content": DAPO_TEXT},
        ],
        ground_truth="16",
        data_source="math_dapo",
        index=7,
    )
    out = apply_prompt_format(record, "boxed")
    assert out.prompt == [
        {"role": "system", "content": "Be careful."},
        {"role": "user", "content": BOXED_TEXT},
    ]
    assert (out.ground_truth, out.data_source, out.index) == ("16", "math_dapo", 7)
    assert record.prompt[1]["content"] == DAPO_TEXT  # the input record is untouched
    assert apply_prompt_format(record, "raw") is record


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from rlrt_megatron.models.tiny import build_tokenizer

    out_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tokenizer(out_dir)
    return AutoTokenizer.from_pretrained(str(out_dir))


def _jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "answer": "16"}) + "\n" for p in prompts))
    return path


def test_load_prompts_raises_or_skips_rows_not_in_dapo_form(tokenizer, tmp_path: Path) -> None:
    from rlrt_megatron.data import DatasetError
    from rlrt_megatron.data.prompts import load_prompts

    path = _jsonl(tmp_path / "mixed.jsonl", [DAPO_TEXT, "What is 4*4?"])
    with pytest.raises(DatasetError, match=r"mixed.jsonl: row 1 \(0-based\): key 'prompt'"):
        load_prompts([str(path)], tokenizer, max_prompt_tokens=4096, prompt_format="boxed")
    prompts, counts = load_prompts(
        [str(path)], tokenizer, max_prompt_tokens=4096, on_bad_row="skip", prompt_format="boxed"
    )
    assert counts == {"rows": 2, "bad_rows": 1, "too_long": 0, "kept": 1}
    assert prompts[0].record.prompt[-1]["content"] == BOXED_TEXT
    assert tokenizer.decode(prompts[0].ids) == (
        f"<|im_start|>user\n{BOXED_TEXT}<|im_end|>\n<|im_start|>assistant\n"
    )
    # raw (the default) keeps every row as it is.
    raw, counts = load_prompts([str(path)], tokenizer, max_prompt_tokens=4096)
    assert counts["kept"] == 2 and raw[0].record.prompt[-1]["content"] == DAPO_TEXT
