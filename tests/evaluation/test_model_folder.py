"""The model folder is checked before any engine starts: tokenizer present, config matching the
weights, runs and checkpoints resolved to their HF export."""

from __future__ import annotations

import json
import shutil

import pytest

from rlrt_megatron.evaluation.model import ModelFolderError, resolve_eval_model


@pytest.fixture
def model_copy(tiny_qwen3_dir, tmp_path):
    return shutil.copytree(tiny_qwen3_dir, tmp_path / "model")


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_valid_folder_resolves_to_itself(tiny_qwen3_dir, tiny_qwen3_untied_dir):
    assert resolve_eval_model(tiny_qwen3_dir) == tiny_qwen3_dir
    assert resolve_eval_model(tiny_qwen3_untied_dir) == tiny_qwen3_untied_dir


def test_folder_without_tokenizer(model_copy):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_copy / name).unlink()
    with pytest.raises(ModelFolderError, match="no tokenizer files"):
        resolve_eval_model(model_copy)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"hidden_size": 96},
            r"model.embed_tokens.weight has shape \(500, 64\) but .* \(500, 96\)",
        ),
        ({"num_hidden_layers": 3}, r"weights lack model.layers.2.input_layernorm.weight"),
        ({"num_hidden_layers": 1}, r"tensors .* does not describe, e.g. \['model.layers.1."),
        ({"tie_word_embeddings": False}, r"weights lack lm_head.weight"),
    ],
)
def test_config_that_does_not_match_the_weights(model_copy, changes, message):
    _edit_config(model_copy, **changes)
    with pytest.raises(ModelFolderError, match=message):
        resolve_eval_model(model_copy)


def test_not_a_model_or_run(tmp_path):
    with pytest.raises(ModelFolderError, match="no such file"):
        resolve_eval_model(tmp_path / "nowhere")
    with pytest.raises(ModelFolderError, match="no complete step_N checkpoint"):
        resolve_eval_model(tmp_path)
