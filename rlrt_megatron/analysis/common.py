"""Helpers the analyses share: grading responses, the correctness of input trajectories, and the
engine-pool plumbing of the analyses that continue generation (rollouts, inject, influence).

The analysis modules and `rlrt_megatron.analysis.commands` import this module, which imports
none of them: the analyses form no import cycle (tests/test_layers.py). The engines are started
through `open_engine_pool` only, called as ``common.open_engine_pool`` so that a test can put a
shared pool in its place with one monkeypatch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def grade_answers(responses: list[str], answers: list[str], grader: str = "math") -> list[bool]:
    """Grade untrusted responses in the reward pool's sandboxed worker processes."""
    from rlrt_megatron.rewards.pool import RewardPool

    if not responses:
        return []
    with RewardPool(grader, num_workers=1) as pool:
        return [score > 0 for score in pool.grade(responses, answers).scores]


def correctness(trajectories: list, tokenizer: Any) -> list[bool]:
    """``correct`` where given, else the response graded against ``answer``."""
    todo = [i for i, t in enumerate(trajectories) if "correct" not in t.record]
    texts = [tokenizer.decode(trajectories[i].request.response_ids) for i in todo]
    graded = grade_answers(texts, [str(trajectories[i].record["answer"]) for i in todo])
    correct = [bool(t.record.get("correct", False)) for t in trajectories]
    for i, ok in zip(todo, graded, strict=True):
        correct[i] = ok
    return correct


@contextlib.contextmanager
def open_engine_pool(model_path: Path, *, max_model_len: int, engines: int) -> Iterator[Any]:
    """A Ray cluster (joined or local) and an engine pool serving ``model_path`` in float32."""
    from rlrt_megatron.cluster import EnginePool, EnginePoolConfig, init_ray
    from rlrt_megatron.rollout import EngineConfig

    init_ray()
    config = EnginePoolConfig(
        engine=EngineConfig(
            model_path=str(model_path), dtype="float32", max_model_len=max_model_len
        ),
        num_engines=engines,
        cpus_per_engine=0.9,
    )
    with EnginePool(config) as pool:
        yield pool


def sampling_config(n: int, max_tokens: int, temperature: float, seed: int) -> Any:
    """The engines' `SamplingConfig` for ``n`` continuations of at most ``max_tokens``."""
    from rlrt_megatron.rollout import SamplingConfig

    return SamplingConfig(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)


def engine_max_len(trajectories: Sequence[Any], extra: int, limit: int) -> int:
    """The engines' context length: the longest prompt + response plus ``extra`` tokens, at most
    ``limit`` (the model's max positions)."""
    longest = max(len(t.request.prompt_ids) + len(t.request.response_ids) for t in trajectories)
    return min(limit, longest + extra)
