"""Weight sync from a pipeline-parallel actor: PP=2 over gloo, each stage holding half the layers.

Only global rank 0 (the first stage) packs buckets, so the export must hand it the second
stage's layers and the final norm too (mbridge broadcasts them across the pipeline). After one
GRPO update and a sync into the session's engines, every tensor the engines received must be the
trained one: their log-probs of fresh samples match the actor's (tolerance as in
test_policy_sync.py), where before the sync they did not.
"""

from __future__ import annotations

import pytest
import torch
from _policy_helpers import LOGPROB_ATOL, STALE_MIN, agreement, flatten, grpo_step, policy_config

from rlrt_megatron.cluster.policy_group import PolicyGroup
from rlrt_megatron.cluster.sync import sync_policy_weights
from rlrt_megatron.rollout import SamplingConfig

pytestmark = [pytest.mark.distributed, pytest.mark.vllm]


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(23)
    return [torch.randint(3, 500, (n,), generator=g).tolist() for n in (6, 4, 7)]


@pytest.fixture(scope="module")
def policy(ray_cluster, tiny_qwen3_dir):
    with PolicyGroup(policy_config(tiny_qwen3_dir, pp=2)) as group:
        yield group


@pytest.fixture(scope="module")
def pool(engine_pool, tiny_qwen3_dir):
    yield engine_pool
    from safetensors.torch import load_file

    engine_pool.sync_weights(load_file(tiny_qwen3_dir / "model.safetensors").items())


def test_pipeline_stages_sync_through_rank_0(policy, pool):
    prompts = _prompts()
    sampling = SamplingConfig(n=2, max_tokens=8, seed=5)
    samples = pool.generate(prompts, sampling)
    agree, scores = agreement(policy, prompts, samples)
    assert agree.max_abs_diff < LOGPROB_ATOL, agree  # same checkpoint on both sides

    grpo_step(policy, prompts, samples, scores)
    stale, _ = agreement(policy, prompts, samples)
    assert stale.max_abs_diff > STALE_MIN, stale

    version = pool.version + 1
    stats = sync_policy_weights(policy, pool, bucket_bytes=32 * 1024)
    assert stats.version == version and stats.num_tensors == len(pool.manifest.shapes) - len(
        pool.manifest.optional
    )
    samples = pool.generate(prompts, sampling)
    assert set(flatten(prompts, samples)[3]) == {version}
    agree, _ = agreement(policy, prompts, samples)
    assert agree.max_abs_diff < LOGPROB_ATOL, agree
