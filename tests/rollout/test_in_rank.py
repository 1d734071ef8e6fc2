"""`generate_in_rank`: what the vLLM engine returns, from the decoder, checked against
transformers' full forward passes (log-probs of the sampled tokens, greedy continuations) and
against its own contract (ends, stop strings, seeds that do not depend on the batch split)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rlrt_megatron.cluster.in_rank_engines import stop_token_ids
from rlrt_megatron.rollout.detokenize import decode_response
from rlrt_megatron.rollout.in_rank import generate_in_rank
from rlrt_megatron.rollout.kv_decoder import Qwen3KVDecoder
from rlrt_megatron.rollout.sampling import SamplingConfig


@pytest.fixture(scope="module")
def tiny(tiny_qwen3_dir):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    decoder = Qwen3KVDecoder(dict(model.state_dict()), config)
    tokenizer = Tokenizer.from_file(str(tiny_qwen3_dir / "tokenizer.json"))
    return model, decoder, tokenizer, stop_token_ids(tiny_qwen3_dir)


PROMPTS = [[5, 17, 42, 9], [77, 3, 120, 64, 8, 11, 250], [300, 12], [44, 45, 46, 47, 48]]


def _generate(tiny, prompts, sampling, **kwargs):
    _, decoder, tokenizer, stop_ids = tiny
    return generate_in_rank(
        decoder,
        prompts,
        sampling,
        stop_ids=stop_ids,
        tokenizer=tokenizer,
        weight_version=3,
        **kwargs,
    )


def _hf_logprobs(model, prompt, response, temperature, top_k):
    with torch.no_grad():
        logits = (
            model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1] / temperature
        )
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_stop_ids_are_the_tokenizer_and_generation_config_eos(tiny_qwen3_dir):
    from tokenizers import Tokenizer

    eos = Tokenizer.from_file(str(tiny_qwen3_dir / "tokenizer.json")).token_to_id("<|im_end|>")
    assert stop_token_ids(tiny_qwen3_dir) == {eos}


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 5)])
def test_logprobs_are_the_sampling_distributions(tiny, temperature, top_k):
    model = tiny[0]
    sampling = SamplingConfig(n=3, temperature=temperature, top_k=top_k, max_tokens=12, seed=4)
    groups = _generate(tiny, PROMPTS, sampling)
    assert [len(g) for g in groups] == [3] * len(PROMPTS)
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for s in group:
            assert s.weight_version == 3 and 1 <= len(s.token_ids) <= 12
            expected = _hf_logprobs(model, prompt, s.token_ids, temperature, top_k)
            torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=2e-5, rtol=0)


def test_raw_logprobs_are_the_models_temperature_one_distribution(tiny):
    sampling = SamplingConfig(n=2, temperature=0.5, max_tokens=8, seed=1)
    groups = _generate(tiny, PROMPTS[:2], sampling, logprobs_mode="raw_logprobs")
    for prompt, group in zip(PROMPTS[:2], groups, strict=True):
        for s in group:
            expected = _hf_logprobs(tiny[0], prompt, s.token_ids, 1.0, 0)
            torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=2e-5, rtol=0)


def test_greedy_is_hfs_greedy_continuation_and_ends_like_vllm(tiny):
    model, _, tokenizer, stop_ids = tiny
    groups = _generate(tiny, PROMPTS, SamplingConfig(n=2, temperature=0.0, max_tokens=40))
    for prompt, group in zip(PROMPTS, groups, strict=True):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(40):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
                if ids[-1] in stop_ids:
                    break
        expected = ids[len(prompt) :]
        for s in group:  # greedy: both samples are the same continuation
            assert s.token_ids == expected
            ended = expected[-1] in stop_ids
            assert s.finish_reason == ("stop" if ended else "length")
            text_ids = expected[:-1] if ended else expected
            # vLLM's incremental detokenizer: primed with the prompt, EOS and incomplete UTF-8
            # left out (tests/cluster/test_in_rank_vs_vllm.py compares with vLLM itself).
            assert s.text == decode_response(tokenizer, prompt, text_ids)


def test_a_prompts_samples_do_not_depend_on_how_the_batch_is_split(tiny):
    sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=10, seed=11)
    whole = _generate(tiny, PROMPTS, sampling)
    halves = _generate(tiny, PROMPTS[:2], sampling) + _generate(
        tiny, PROMPTS[2:], sampling, prompt_offset=2
    )
    # Same draws; the log-probs to float32 rounding (another batch pads the prompts differently).
    assert _ids(whole) == _ids(halves)
    for a, b in zip(_flat(whole), _flat(halves), strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs))
    assert _generate(tiny, PROMPTS, sampling) == whole  # same batch: bit for bit
    assert _ids(_generate(tiny, PROMPTS, dataclasses.replace(sampling, seed=12))) != _ids(whole)


def _flat(groups):
    return [s for g in groups for s in g]


def _ids(groups):
    return [s.token_ids for s in _flat(groups)]


def test_stop_string_ends_the_sample_at_the_completing_token(tiny):
    _, _, tokenizer, _ = tiny
    prompt = PROMPTS[2]
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=30)
    full = _generate(tiny, [prompt], greedy)[0][0]
    stop = " by"
    assert stop in full.text, f"the tiny model's greedy text changed: {full.text!r}"
    cut = _generate(tiny, [prompt], dataclasses.replace(greedy, stop=(stop, "zzz")))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert cut.logprobs == full.logprobs[: len(cut.token_ids)]
    # The kept tokens are the shortest prefix whose text contains the stop string.
    assert stop in decode_response(tokenizer, prompt, cut.token_ids)
    assert stop not in decode_response(tokenizer, prompt, cut.token_ids[:-1])


def test_empty_batch(tiny):
    assert _generate(tiny, [], SamplingConfig(n=2, max_tokens=4)) == []
