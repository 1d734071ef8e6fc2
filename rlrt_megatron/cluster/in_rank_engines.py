"""``rollout.backend: in_rank``: the trainer ranks generate the rollouts themselves.

    placement = InRankPlacement(policy_config, InRankConfig(model_path=..., max_model_len=...))
    samples = placement.engines.generate(prompt_ids, sampling)   # as EnginePool.generate
    placement.sync_weights()                                      # a version bump, nothing moves

No vLLM engine starts. Each rank gathers the full weights (`PolicyActor.export_hf_weights`, the
stream the weight sync sends; with TP/PP > 1 a collective that leaves a whole copy on every rank)
into a `Qwen3KVDecoder` and generates its contiguous share of the batch's prompts
(`rlrt_megatron.rollout.in_rank`); rank 0 of the driver's view concatenates the shares in rank
order. The decoder is rebuilt once per weight version (the driver's ``sync_weights`` bumps it
after every update), so the evaluation after an update reuses the rollouts' decoder.

For which models it pays (small ones, where an engine's per-step overhead outweighs the model)
and what it reproduces of vLLM, see `rlrt_megatron.rollout.in_rank`. One-step-off generation
needs engines that run beside the update, so ``rollout.mode=one_step_off`` refuses this backend
at config load.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrt_megatron.cluster.policy_group import PolicyGroup, PolicyGroupConfig
from rlrt_megatron.cluster.pool import SyncStats, split_evenly
from rlrt_megatron.rollout.sampling import Sample, SamplingConfig, validate_prompts

_STATE_ATTRIBUTE = "_in_rank_generation"
"""Where a rank keeps its decoder, tokenizer and stop ids between calls (on its `PolicyActor`)."""


@dataclass(frozen=True, kw_only=True)
class InRankConfig:
    """Attributes:
    model_path: the HF checkpoint folder (its tokenizer, generation config and EOS ids).
    max_model_len: prompt plus response, in tokens (prompts that leave no room are refused, as
        the vLLM engines refuse them).
    logprobs_mode: processed_logprobs | raw_logprobs (`EngineConfig.logprobs_mode`).
    """

    model_path: str
    max_model_len: int
    logprobs_mode: str = "processed_logprobs"


def stop_token_ids(model_path: str | Path) -> set[int]:
    """The ids that end a sample, collected as vLLM collects them: the tokenizer's EOS, plus the
    EOS id(s) of ``generation_config.json`` or, without that file, of ``config.json``."""
    folder = Path(model_path)
    ids: set[int] = set()
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.exists():
        eos = json.loads(tokenizer_config.read_text()).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if eos:
            from tokenizers import Tokenizer

            eos_id = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(eos)
            if eos_id is not None:
                ids.add(eos_id)
    source = folder / "generation_config.json"
    if not source.exists():
        source = folder / "config.json"
    eos_ids = json.loads(source.read_text()).get("eos_token_id")
    if isinstance(eos_ids, int):
        eos_ids = [eos_ids]
    ids.update(int(i) for i in eos_ids or [])
    return ids


class _RankState:
    """One rank's generation state: tokenizer, stop ids, and the decoder of one weight version."""

    def __init__(self, model_path: str) -> None:
        from tokenizers import Tokenizer

        self.hf_config = json.loads((Path(model_path) / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
        self.stop_ids = stop_token_ids(model_path)
        self.version: int | None = None
        self.decoder: Any = None

    def decoder_for(self, actor: Any, version: int) -> Any:
        from rlrt_megatron.rollout.kv_decoder import Qwen3KVDecoder

        if self.version != version:
            self.decoder = None  # free the old copy before gathering the new one
            # With TP = 1 the export yields live parameters; the decoder copies what it keeps
            # (the next optimizer step changes them in place).
            self.decoder = Qwen3KVDecoder(dict(actor.export_hf_weights()), self.hf_config)
            self.version = version
        return self.decoder


def generate_on_rank(
    actor: Any,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    config: InRankConfig,
    version: int,
) -> list[list[Sample]]:
    """Runs in every rank (`PolicyGroup.run_all`): this rank's contiguous share of ``prompts``
    (all ranks gather the weights together, then each decodes its own share)."""
    import torch.distributed as dist

    from rlrt_megatron.rollout.in_rank import generate_in_rank

    state = getattr(actor, _STATE_ATTRIBUTE, None)
    if state is None:
        state = _RankState(config.model_path)
        setattr(actor, _STATE_ATTRIBUTE, state)
    decoder = state.decoder_for(actor, version)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    shares = split_evenly(len(prompts), world)
    if rank >= len(shares):
        return []
    start, end = shares[rank]
    return generate_in_rank(
        decoder,
        prompts[start:end],
        sampling,
        stop_ids=state.stop_ids,
        tokenizer=state.tokenizer,
        weight_version=version,
        prompt_offset=start,
        logprobs_mode=config.logprobs_mode,
    )


class InRankEngines:
    """The rollout side of ``rollout.backend: in_rank``: `RolloutEngines`' interface
    (``generate``, ``submit``, ``version``)."""

    def __init__(self, policy: PolicyGroup, config: InRankConfig, vocab_size: int) -> None:
        self._policy = policy
        self.config = config
        self.vocab_size = vocab_size
        self.version = 0

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Sample]]:
        prompts = validate_prompts(
            prompts,
            max_model_len=self.config.max_model_len,
            vocab_size=self.vocab_size,
            max_tokens=sampling.max_tokens,
        )
        if not prompts:
            return []
        shares = self._policy.run_all(
            generate_on_rank, prompts, sampling, self.config, self.version
        )
        samples = [group for share in shares for group in share]
        if len(samples) != len(prompts):
            raise RuntimeError(
                f"the ranks returned {len(samples)} groups for {len(prompts)} prompts"
            )
        return samples

    def submit(self, prompts: list[list[int]], sampling: SamplingConfig) -> Any:
        raise RuntimeError(
            "rollout.backend=in_rank generates inside the trainer ranks, which cannot generate "
            "while they update: it has no asynchronous (one_step_off) generation"
        )


class InRankPlacement:
    """The policy group alone; its ranks are the engines (`InRankEngines`). Has `Placement`'s
    interface: ``policy``, ``engines``, ``sync_weights``, ``release_engine_memory``."""

    def __init__(self, policy: PolicyGroupConfig, config: InRankConfig) -> None:
        self.policy: PolicyGroup | None = PolicyGroup(policy)
        try:
            self.engines: InRankEngines | None = InRankEngines(
                self.policy, config, _vocab_size(config.model_path)
            )
        except BaseException:
            self.shutdown()
            raise

    def sync_weights(
        self, *, version: int | None = None, bucket_bytes: int | None = None
    ) -> SyncStats:
        """Nothing to send: the ranks generate with the weights they hold. The version advances
        (``version``, or the current one + 1), which makes the ranks rebuild their decoder from
        the updated weights at the next generation."""
        assert self.engines is not None
        began = time.perf_counter()
        self.engines.version = self.engines.version + 1 if version is None else version
        return SyncStats(
            version=self.engines.version,
            num_buckets=0,
            num_tensors=0,
            nbytes=0,
            seconds=time.perf_counter() - began,
        )

    def release_engine_memory(self) -> None:
        """Nothing to release: no engine holds memory beside the ranks."""

    def shutdown(self) -> None:
        if self.policy is not None:
            self.policy.shutdown()
            self.policy = None
        self.engines = None

    def __enter__(self) -> InRankPlacement:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _vocab_size(model_path: str) -> int:
    return int(json.loads((Path(model_path) / "config.json").read_text())["vocab_size"])
