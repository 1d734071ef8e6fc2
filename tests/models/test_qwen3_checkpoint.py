"""Checkpoint-folder and layout validation (no torch.distributed), and vocab padding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlrt_megatron.models.qwen3_checkpoint import (
    CheckpointError,
    Qwen3Checkpoint,
    validate_qwen3_layout,
)


@pytest.fixture
def folder(tiny_qwen3_dir, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_qwen3_dir, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_reads_the_architecture(tiny_qwen3_dir):
    ckpt = Qwen3Checkpoint.from_folder(tiny_qwen3_dir)
    assert (ckpt.num_layers, ckpt.hidden_size, ckpt.head_dim) == (2, 64, 32)
    assert (ckpt.num_attention_heads, ckpt.num_key_value_heads) == (4, 2)
    assert ckpt.rope_theta == 1_000_000.0  # from rope_parameters (transformers 5.x layout)
    assert ckpt.tie_word_embeddings is True
    assert ckpt.weight_files == (Path(tiny_qwen3_dir) / "model.safetensors",)


def test_reads_top_level_rope_theta_of_transformers_4(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_theta"] = 10_000.0
    (folder / "config.json").write_text(json.dumps(config))
    assert Qwen3Checkpoint.from_folder(folder).rope_theta == 10_000.0


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        Qwen3Checkpoint.from_folder(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        Qwen3Checkpoint.from_folder(tmp_path / "nope")


def test_no_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        Qwen3Checkpoint.from_folder(folder)


def test_shard_listed_in_index_is_missing(folder):
    index = {
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
        },
    }
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        Qwen3Checkpoint.from_folder(folder)


def test_other_architecture(folder):
    _edit_config(folder, architectures=["LlamaForCausalLM"])
    with pytest.raises(CheckpointError, match="LlamaForCausalLM.*only Qwen3ForCausalLM"):
        Qwen3Checkpoint.from_folder(folder)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "yarn"),
    ],
)
def test_unsupported_variants(folder, changes, match):
    _edit_config(folder, **changes)
    with pytest.raises(CheckpointError, match=match):
        Qwen3Checkpoint.from_folder(folder)


@pytest.mark.parametrize(
    ("tp", "pp", "match"),
    [
        (3, 1, "num_attention_heads=4"),
        (4, 1, "num_key_value_heads=2"),
        (1, 3, "num_hidden_layers=2"),
    ],
)
def test_layout_that_does_not_divide_the_model(tiny_qwen3_dir, tp, pp, match):
    with pytest.raises(CheckpointError, match=match):
        validate_qwen3_layout(tiny_qwen3_dir, tensor_parallel=tp, pipeline_parallel=pp)


def test_layouts_that_fit(tiny_qwen3_dir):
    for tp, pp in [(1, 1), (2, 1), (1, 2), (2, 2)]:
        validate_qwen3_layout(tiny_qwen3_dir, tensor_parallel=tp, pipeline_parallel=pp)


@pytest.mark.parametrize(
    ("fixture", "tp", "expected"),
    [
        ("tiny_qwen3_dir", 1, 512),  # 500 rows
        ("tiny_qwen3_dir", 2, 512),
        ("tiny_qwen3_untied_dir", 1, 640),  # 520 rows
        ("tiny_qwen3_untied_dir", 2, 768),
    ],
)
def test_padded_vocab_is_a_multiple_of_128_times_tp(request, fixture, tp, expected):
    ckpt = Qwen3Checkpoint.from_folder(request.getfixturevalue(fixture))
    assert ckpt.padded_vocab_size(tp) == expected
    assert expected % (128 * tp) == 0 and expected >= ckpt.vocab_size
