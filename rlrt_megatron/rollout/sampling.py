"""Sampling settings and generated samples: the engine-independent half of the rollout interface.

Nothing here imports vLLM, so configs can be built and validated (and results consumed) in
processes that never start an engine: the trainer driver, CPU unit tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How to sample responses. Validated on construction; an out-of-range value is an error.

    The ranges are vLLM's own, checked here so that a bad setting fails in the driver with the
    field's name, before any engine sees it.
    """

    n: int = 1
    """Samples per prompt (the K rollouts of a GRPO group)."""
    temperature: float = 1.0
    """In [0, 2]; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it (vLLM's -1 is accepted and means the same)."""
    max_tokens: int = 256
    """Response length limit in tokens, >= 1. The prompt plus this must fit the engine's
    ``max_model_len``: a prompt that leaves less room is rejected rather than silently answered
    with a shorter response."""
    stop: tuple[str, ...] = ()
    """Stop strings. The text excludes the matched stop string; the token ids end with the token
    that completed it (those are the tokens the policy sampled and will be trained on)."""
    seed: int | None = None
    """Base seed, >= 0, or None for fresh randomness. Prompt ``i`` of a batch is sampled with seed
    ``seed + i``, so results do not depend on how a pool splits the batch across engines."""

    def __post_init__(self) -> None:
        _check_int("n", self.n, minimum=1)
        _check_float("temperature", self.temperature, 0.0, 2.0, low_open=False)
        _check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("top_k", self.top_k, minimum=-1)
        _check_int("max_tokens", self.max_tokens, minimum=1)
        if isinstance(self.stop, str) or not isinstance(self.stop, tuple | list):
            raise ValueError(f"stop must be a tuple of strings, got {self.stop!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def prompt_seed(self, prompt_index: int) -> int | None:
        """The seed of prompt ``prompt_index`` of a batch (None when the config has no seed)."""
        return None if self.seed is None else self.seed + prompt_index

    def to_vllm_kwargs(self, prompt_index: int) -> dict[str, Any]:
        """Keyword arguments for ``vllm.SamplingParams`` for one prompt of a batch.

        ``logprobs=0`` asks for the sampled token's log-prob only (no top-k alternatives).
        """
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": 0 if self.top_k == -1 else self.top_k,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop) or None,
            "seed": self.prompt_seed(prompt_index),
            "logprobs": 0,
        }


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One generated response.

    ``logprobs[i]`` is the log-probability of ``token_ids[i]`` under the distribution it was
    sampled from (see `rlrt_megatron.rollout.engine.EngineConfig.logprobs_mode`).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    text: str
    weight_version: int
    """The version of the weights the engine held while generating this sample."""

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"{len(self.token_ids)} token ids but {len(self.logprobs)} log-probs in a sample"
            )


def validate_prompts(
    prompts: Any, *, max_model_len: int, vocab_size: int, max_tokens: int
) -> list[list[int]]:
    """Check a batch of token-id prompts against an engine's limits; return it as lists of ints.

    Raises `PromptError` naming the first offending prompt: not a list of ints, empty, a token id
    outside ``[0, vocab_size)``, or ``len(prompt) + max_tokens > max_model_len``.
    """
    if isinstance(prompts, str | bytes) or not hasattr(prompts, "__len__"):
        raise PromptError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    checked = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str | bytes) or not hasattr(prompt, "__iter__"):
            raise PromptError(
                f"prompt {i} must be a list of token ids, got {type(prompt).__name__}"
                " (the engine takes token ids, not text)"
            )
        ids = list(prompt)
        if not ids:
            raise PromptError(f"prompt {i} is empty")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int):
                raise PromptError(f"prompt {i} holds a non-integer token id {t!r}")
            if not 0 <= t < vocab_size:
                raise PromptError(
                    f"prompt {i} holds token id {t}, outside the model's vocabulary"
                    f" [0, {vocab_size})"
                )
        if len(ids) + max_tokens > max_model_len:
            raise PromptTooLongError(
                f"prompt {i} has {len(ids)} tokens; with max_tokens={max_tokens} that exceeds the"
                f" engine's max_model_len={max_model_len} (prompt length must be at most"
                f" {max_model_len - max_tokens}); raise max_model_len or shorten the prompt"
            )
        checked.append(ids)
    return checked


class PromptError(ValueError):
    """A prompt the engine cannot take."""


class PromptTooLongError(PromptError):
    """A prompt that leaves no room for ``max_tokens`` within the engine's ``max_model_len``."""
