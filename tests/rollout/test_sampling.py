"""SamplingConfig validation and prompt checks: pure Python, no engine."""

from __future__ import annotations

import pytest

from rlrt_megatron.rollout import PromptError, PromptTooLongError, Sample, SamplingConfig
from rlrt_megatron.rollout.sampling import validate_prompts


def test_defaults_and_vllm_kwargs():
    cfg = SamplingConfig(
        n=4, temperature=0.7, top_p=0.8, top_k=20, max_tokens=32, stop=["\n\n"], seed=5
    )
    assert cfg.stop == ("\n\n",)
    assert not cfg.greedy
    kwargs = cfg.to_vllm_kwargs(3)
    assert kwargs == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "max_tokens": 32,
        "stop": ["\n\n"],
        "seed": 8,  # seed + prompt index: independent of how a pool splits the batch
        "logprobs": 0,
    }
    assert SamplingConfig(temperature=0).greedy
    assert SamplingConfig().to_vllm_kwargs(0)["seed"] is None
    assert SamplingConfig(top_k=-1).to_vllm_kwargs(0)["top_k"] == 0
    assert SamplingConfig().to_vllm_kwargs(0)["stop"] is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n", 0, "n must be >= 1"),
        ("n", 1.5, "n must be an integer"),
        ("n", True, "n must be an integer"),
        ("temperature", -0.1, r"temperature must be in \[0.0, 2.0\]"),
        ("temperature", 2.5, "temperature must be in"),
        ("temperature", float("nan"), "temperature must be a finite number"),
        ("top_p", 0.0, r"top_p must be in \(0.0, 1.0\]"),
        ("top_p", 1.01, "top_p must be in"),
        ("top_k", -2, "top_k must be >= -1"),
        ("max_tokens", 0, "max_tokens must be >= 1"),
        ("stop", "abc", "stop must be a tuple of strings"),
        ("stop", ("",), "non-empty strings"),
        ("seed", -1, "seed must be >= 0"),
    ],
)
def test_out_of_range_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{field: value})


def test_unknown_setting_is_an_error():
    with pytest.raises(TypeError):
        SamplingConfig(temprature=1.0)  # type: ignore[call-arg]


def test_validate_prompts_accepts_and_normalizes():
    out = validate_prompts(((1, 2), [3]), max_model_len=8, vocab_size=10, max_tokens=6)
    assert out == [[1, 2], [3]]


@pytest.mark.parametrize(
    ("prompts", "error", "message"),
    [
        ([[1, 2], "hello"], PromptError, "prompt 1 must be a list of token ids"),
        ("hello", PromptError, "prompts must be a list"),
        ([[1], []], PromptError, "prompt 1 is empty"),
        ([[1, 2.0]], PromptError, "non-integer token id"),
        ([[1, 10]], PromptError, r"token id 10, outside the model's vocabulary \[0, 10\)"),
        ([[1, -1]], PromptError, "token id -1"),
        ([[1], [1, 2, 3]], PromptTooLongError, "prompt 1 has 3 tokens.*max_model_len=8"),
    ],
)
def test_bad_prompts_raise_naming_the_prompt(prompts, error, message):
    with pytest.raises(error, match=message):
        validate_prompts(prompts, max_model_len=8, vocab_size=10, max_tokens=6)


def test_sample_checks_alignment():
    with pytest.raises(ValueError, match="2 token ids but 1 log-probs"):
        Sample(token_ids=[1, 2], logprobs=[-0.1], finish_reason="stop", text="", weight_version=0)
