"""A `VLLMEngine` in a Ray actor: the unit `EnginePool` places, calls, and replaces."""

from __future__ import annotations

from typing import Any

from rlrt_megatron.cluster.actor_logs import redirect_output
from rlrt_megatron.rollout import EngineConfig, Sample, SamplingConfig, VLLMEngine, WeightBucket
from rlrt_megatron.transport.manifest import WeightManifest


class EngineActor:
    """Owns one engine for the actor's lifetime. Calls run one at a time (max_concurrency 1), so a
    weight update never interleaves with a generation and every sample's version is exact."""

    def __init__(self, config: EngineConfig, log_file: str | None = None) -> None:
        redirect_output(log_file)  # first: vLLM's start-up goes to the run's logs/ too
        self.engine = VLLMEngine(config)

    def status(self) -> dict[str, Any]:
        return self.engine.status()

    def weight_manifest(self) -> WeightManifest:
        return self.engine.weight_manifest()

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, prompt_offset: int
    ) -> list[list[Sample]]:
        return self.engine.generate(prompts, sampling, prompt_offset=prompt_offset)

    def begin_weight_update(self) -> None:
        self.engine.begin_weight_update()

    def load_weight_bucket(self, bucket: WeightBucket) -> int:
        return self.engine.load_weight_bucket(bucket)

    def finish_weight_update(self, version: int, num_tensors: int) -> int:
        return self.engine.finish_weight_update(version, num_tensors)

    def join_weight_group(self, spec: Any, first_rank: int) -> list[int]:
        return self.engine.join_weight_group(spec, first_rank)

    def leave_weight_group(self) -> None:
        self.engine.leave_weight_group()

    def receive_weight_broadcast(self) -> int:
        return self.engine.receive_weight_broadcast()

    def load_ipc_bucket(self, shared: Any) -> int:
        return self.engine.load_ipc_bucket(shared)

    def sleep(self, level: int) -> None:
        self.engine.sleep(level)

    def wake_up(self, tags: list[str] | None) -> None:
        self.engine.wake_up(tags)
