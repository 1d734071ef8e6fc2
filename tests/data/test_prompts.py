import json

import pytest

from rlrt_megatron.data.prompts import load_prompts, load_tokenizer, prompt_batches


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from rlrt_megatron.models.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    return load_tokenizer(path)


def test_templated_prompts_with_length_filter_and_batches(tmp_path, tokenizer):
    rows = [{"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": "x " * 200, "answer": "3"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts, counts = load_prompts([str(path)], tokenizer, max_prompt_tokens=64)
    assert counts == {"rows": 2, "bad_rows": 0, "too_long": 1, "kept": 1}
    text = tokenizer.decode(prompts[0].ids)
    assert text.startswith("<|im_start|>user\nWhat is 1 + 1?") and text.endswith("assistant\n")
    batches = prompt_batches(prompts * 4, prompts_per_step=2, seed=0)
    assert len(next(batches)) == 2 and batches.state_dict()["batch_in_epoch"] == 1
    with pytest.raises(ValueError, match="no prompt of"):
        load_prompts([str(path)], tokenizer, max_prompt_tokens=2)


def test_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_skipped_rows_are_reported_and_an_empty_file_says_so(tmp_path, tokenizer, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"answer": "3"}\nnot json\n')
    with caplog.at_level("WARNING"):
        prompts, counts = load_prompts(
            [str(path)], tokenizer, max_prompt_tokens=64, on_bad_row="skip"
        )
    assert counts["bad_rows"] == 2 and counts["kept"] == 1
    assert "skipped 2 of 3 rows as malformed (data.on_bad_row=skip)" in caplog.text
    assert "line 2" in caplog.text  # the first skipped rows are named
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n")
    with pytest.raises(ValueError, match="blank.jsonl: the file holds no rows"):
        load_prompts([str(blank)], tokenizer, max_prompt_tokens=64)


def test_the_trainer_path_still_exports_the_prompt_loaders():
    """Prompt loading moved from trainer/ to data/ (evaluation and analysis use it too)."""
    from rlrt_megatron.data import prompts
    from rlrt_megatron.trainer import prompts as old

    assert (old.load_prompts, old.load_tokenizer, old.prompt_batches, old.TemplatedPrompt) == (
        prompts.load_prompts,
        prompts.load_tokenizer,
        prompts.prompt_batches,
        prompts.TemplatedPrompt,
    )
