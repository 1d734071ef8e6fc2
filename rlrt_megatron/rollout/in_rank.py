"""In-rank generation: a trainer rank samples rollouts with the weights it trains.

    samples = generate_in_rank(decoder, prompts, sampling, stop_ids={2}, tokenizer=tok,
                               weight_version=7, prompt_offset=0)

``rollout.backend: in_rank`` (`rlrt_megatron.cluster.in_rank_engines`) runs this on the ranks
instead of starting vLLM engines — NeMo-RL's ``generation.backend: megatron`` and verl's HF
rollout serve the same purpose. It pays off for small models, where a vLLM engine's per-step
scheduling, sampler and input preparation cost more than the model, and it removes the weight
sync (the decoder reads the rank's weights). vLLM stays the backend for anything large.

What it reproduces of the vLLM engine (`rlrt_megatron.rollout.engine.VLLMEngine`), so that
the trainer cannot tell them apart:
- sampling: temperature, top-k, top-p as vLLM's v1 sampler (`token_sampler`); greedy at
  temperature 0; per-prompt seeds ``seed + prompt_offset + i`` (a prompt's samples do not depend
  on how the batch is split); ``n`` samples per prompt share the prompt's prefill.
- log-probs: each sampled token's ``processed_logprobs`` (after temperature/top-k/top-p) or
  ``raw_logprobs`` (the model's temperature-1 distribution), as `EngineConfig.logprobs_mode`.
- ends: a sample stops at an end-of-sequence id (``stop_ids``: the tokenizer's EOS and the
  checkpoint's generation-config EOS ids, as vLLM collects them), kept as the last token with
  ``finish_reason="stop"``; at ``max_tokens`` with "length". Stop strings: the sample ends at
  the token that completes the first match (kept), its text stops before the match, "stop".
- text: detokenized as vLLM's incremental detokenizer does (`detokenize.decode_response`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch

from rlrt_megatron.rollout.detokenize import decode_response
from rlrt_megatron.rollout.kv_decoder import Qwen3KVDecoder
from rlrt_megatron.rollout.sampling import Sample, SamplingConfig
from rlrt_megatron.rollout.token_sampler import processed_logits, sample_rows

COMPACT_FRACTION = 0.25
"""Finished rows leave the decode batch (cache rows dropped) once they are this fraction of it:
often enough that long tails decode small batches, rarely enough that the copies stay cheap."""


def generate_in_rank(
    decoder: Qwen3KVDecoder,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    *,
    stop_ids: Collection[int],
    tokenizer: Any,
    weight_version: int,
    prompt_offset: int = 0,
    logprobs_mode: str = "processed_logprobs",
) -> list[list[Sample]]:
    """``sampling.n`` samples per prompt (token-id lists, already validated against the model's
    length limit), aligned with ``prompts``."""
    if not prompts:
        return []
    n, max_tokens = sampling.n, sampling.max_tokens
    generators = _prompt_generators(sampling, prompt_offset, len(prompts))
    longest = max(len(p) for p in prompts)
    capacity = longest + max_tokens
    # Prefill once per prompt (left-padded), then give each of its n samples a copy of the cache.
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    key_mask = torch.zeros(len(prompts), capacity, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.tensor(p)
        key_mask[i, longest - len(p) : longest] = True
    positions = (key_mask[:, :longest].long().cumsum(-1) - 1).clamp(min=0)
    # Model inputs, cache and logits live where the weights are; the bookkeeping stays on CPU.
    device = decoder.device
    ids, positions, key_mask = ids.to(device), positions.to(device), key_mask.to(device)
    cache = decoder.new_cache(len(prompts), capacity)
    logits = decoder.forward(ids, positions, cache, start=0, key_mask=key_mask)
    expand = torch.arange(len(prompts)).repeat_interleave(n)
    on_device = expand.to(device)
    cache, logits, key_mask = cache.select(on_device), logits[on_device], key_mask[on_device]
    next_position = positions[on_device, -1] + 1

    rows = len(prompts) * n
    tokens = torch.zeros(rows, max_tokens, dtype=torch.long)
    logprobs = torch.zeros(rows, max_tokens)
    lengths = torch.full((rows,), max_tokens, dtype=torch.long)
    stopped = torch.zeros(rows, dtype=torch.bool)
    stop_tensor = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
    active = torch.arange(rows)  # original row of each decode-batch row
    dropped_since_compaction = 0
    for t in range(max_tokens):
        token, token_logprob = _next_tokens(
            logits, sampling, expand[active], generators, logprobs_mode
        )
        sampled = token.cpu()
        tokens[active, t] = sampled
        logprobs[active, t] = token_logprob.cpu()
        ended = torch.isin(sampled, stop_tensor) & ~stopped[active]  # not yet compacted away
        if ended.any():
            finished = active[ended]
            lengths[finished] = t + 1
            stopped[finished] = True
            dropped_since_compaction += int(ended.sum())
        if t + 1 == max_tokens or bool(stopped[active].all()):
            break
        slot = longest + t
        key_mask[:, slot] = True
        if dropped_since_compaction >= COMPACT_FRACTION * len(active):
            keep = (~stopped[active]).nonzero().flatten()
            active, keep = active[keep], keep.to(device)
            token, cache = token[keep], cache.select(keep)
            key_mask, next_position = key_mask[keep], next_position[keep]
            dropped_since_compaction = 0
        logits = decoder.forward(
            token[:, None], next_position[:, None], cache, start=slot, key_mask=key_mask
        )
        next_position = next_position + 1

    results: list[list[Sample]] = []
    for i, prompt in enumerate(prompts):
        group = []
        for row in range(i * n, (i + 1) * n):
            length = int(lengths[row])
            group.append(
                _sample(
                    prompt,
                    tokens[row, :length].tolist(),
                    logprobs[row, :length].tolist(),
                    bool(stopped[row]),
                    sampling.stop,
                    tokenizer,
                    weight_version,
                )
            )
        results.append(group)
    return results


def _prompt_generators(
    sampling: SamplingConfig, prompt_offset: int, num_prompts: int
) -> list[torch.Generator | None]:
    if sampling.seed is None:
        return [None] * num_prompts
    out = []
    for i in range(num_prompts):
        g = torch.Generator()
        g.manual_seed(sampling.prompt_seed(prompt_offset + i))
        out.append(g)
    return out


def _next_tokens(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    row_prompt: torch.Tensor,
    generators: list[torch.Generator | None],
    logprobs_mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled token [B] and its log-prob [B] (`token_sampler` and the module docstring)."""
    if sampling.greedy:
        token = logits.argmax(dim=-1)
        # vLLM's greedy requests report the raw distribution's log-prob (temperature 0 has no
        # processed distribution).
        return token, logits.log_softmax(dim=-1).gather(-1, token[:, None]).squeeze(-1)
    processed = processed_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    log_probs = processed.log_softmax(dim=-1)
    token = sample_rows(log_probs.exp(), row_prompt, generators)
    if logprobs_mode == "raw_logprobs":
        log_probs = logits.log_softmax(dim=-1)
    return token, log_probs.gather(-1, token[:, None]).squeeze(-1)


def _sample(
    prompt: list[int],
    token_ids: list[int],
    logprobs: list[float],
    stopped: bool,
    stop_strings: tuple[str, ...],
    tokenizer: Any,
    weight_version: int,
) -> Sample:
    # The token that ended a sample is not part of its text (vLLM's detokenizer skips it).
    text = decode_response(tokenizer, prompt, token_ids[:-1] if stopped else token_ids)
    if stop_strings:
        match = _first_stop(prompt, token_ids, stop_strings, tokenizer, text)
        if match is not None:
            end, text = match
            token_ids, logprobs, stopped = token_ids[:end], logprobs[:end], True
    return Sample(
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason="stop" if stopped else "length",
        text=text,
        weight_version=weight_version,
    )


def _first_stop(
    prompt: list[int],
    token_ids: list[int],
    stop_strings: tuple[str, ...],
    tokenizer: Any,
    text: str,
) -> tuple[int, str] | None:
    """(tokens kept, text) at the first stop string, or None. The sample was generated past it
    (the batch does not stop per string); the tokens after the completing one are discarded,
    which leaves exactly the distribution of a sample that stopped there."""
    if not any(s in text for s in stop_strings):
        return None
    for end in range(1, len(token_ids) + 1):
        prefix = decode_response(tokenizer, prompt, token_ids[:end])
        hits = [prefix.find(s) for s in stop_strings if s in prefix]
        if hits:
            return end, prefix[: min(hits)]
    return None
