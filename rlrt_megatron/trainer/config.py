"""The run configuration: one YAML file (+ ``key=value`` overrides) for a whole training run.

Sections are the components' own configs where those read well in YAML (`AlgorithmConfig`,
`ParallelConfig`, `AdamWConfig`, `RewardConfig`, `RayConfig`) and small trainer-level sections
that build the rest (the engine pool, sampling) from the one model path. Table 5 of the paper
is the default where it applies (K = 8 rollouts, temperature 1.0, warm-up 10, weight decay 0.01,
grad clip 1.0); the learning rate defaults to the method's (registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.cluster.ray_cluster import RayConfig
from rlrt_megatron.configuration import load_config
from rlrt_megatron.megatron.parallel import ParallelConfig
from rlrt_megatron.rewards.pool import RewardConfig


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    path: str
    """A Hugging Face Qwen3 checkpoint folder (config.json, safetensors, tokenizer files)."""
    enable_thinking: bool | None = None
    """Passed to the chat template (Qwen3 thinking models); None: the template's default."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    train_files: list[str]
    """verl-style parquet or jsonl files of prompts with ground truths."""
    eval_files: list[str] = field(default_factory=list)
    prompts_per_step: int = 256
    """G: questions per RL step."""
    rollouts_per_prompt: int = 8
    """K: samples per question (the GRPO group)."""
    max_prompt_tokens: int = 2048
    """Longer prompts (after chat templating) are dropped when the data is loaded."""
    on_bad_row: Literal["raise", "skip"] = "raise"
    prompt_format: Literal["raw", "boxed"] = "raw"
    """Answer instruction of the training prompts (`rlrt_megatron.data.prompt_format`): raw keeps
    the file's; boxed rewrites DAPO-Math-17k's "Answer: $Answer" instruction to "... put your final
    answer within \\boxed{}." (the paper's form; any other prompt is a bad row). Eval files are
    used as they are."""
    seed: int = 0
    """Shuffling seed of the prompt order (each epoch is reshuffled)."""


@dataclass(frozen=True, kw_only=True)
class OptimizerSection:
    lr: float | None = None
    """Peak learning rate; None: the method's default (1e-6 GRPO/RLRT/RLSD, 1e-5 SDPO, ...)."""
    warmup_steps: int = 10
    schedule_unit: Literal["rl_step", "optimizer_step"] = "rl_step"
    """What warmup_steps counts: RL steps (the paper's Table 5 / verl; the LR is constant within
    a step) or optimizer steps (mini-batches). See rlrt_megatron/megatron/optimizer.py."""
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True, kw_only=True)
class ActorSection:
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data_parallel: int = 1
    """DP size: the actor runs TP × PP × CP × DP ranks."""
    dtype: torch.dtype = torch.bfloat16
    sequence_parallel: bool = False
    max_tokens: int = 8192
    """Token budget of a micro-batch (scoring and update): real tokens when packing, else
    padded tokens (sequences × longest)."""
    packing: bool = True
    """Packed micro-batches (sequences back to back, attention and RoPE per sequence); needs
    attention sdpa/te; required for context parallelism (parallel.context_parallel)."""
    mini_batches: int = 2
    """Optimizer steps per RL step (Table 5: 256 prompts × 8 / mini-batch 128 prompts = 2)."""
    teacher_weights: Literal["behavior", "current", "initial", "ema"] = "behavior"
    ema_rate: float = 0.01
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation in the update (full: what paper-scale micro-batches need)."""
    recompute_num_layers: int = 1
    attention: Literal["auto", "te", "sdpa", "local"] = "auto"
    """Core attention: auto = Transformer Engine when importable, else PyTorch SDPA."""
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    torch_threads: int | None = None
    """Intra-op threads of each CPU rank; None: derived (`trainer.stack.cpu_threads`): the
    node's cores per rank in sync mode (the engines idle while the ranks work), shared with the
    engines in one_step_off mode. Unused with GPUs."""

    def __post_init__(self) -> None:
        # Layout errors found here fail at config load, before Ray or any rank starts.
        if self.parallel.context_parallel > 1 and not self.packing:
            raise ValueError(
                f"actor.parallel.context_parallel={self.parallel.context_parallel} splits packed "
                "sequences: it needs actor.packing=true"
            )
        if self.packing and self.attention == "local":
            raise ValueError(
                "actor.attention=local (megatron-core's unfused attention) has no packed-sequence "
                "support: use actor.attention=sdpa|te|auto or actor.packing=false"
            )
        if self.data_parallel < 1:
            raise ValueError(f"actor.data_parallel must be >= 1, got {self.data_parallel}")


@dataclass(frozen=True, kw_only=True)
class RolloutSection:
    num_engines: int = 1
    tensor_parallel: int = 1
    """TP size of each engine."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_response_tokens: int = 20480
    dtype: str = "auto"
    """vLLM dtype ("auto" serves float32 checkpoints as bfloat16: say float32 to keep them)."""
    gpu_memory_utilization: float = 0.5
    cpus_per_engine: float = 1.0
    gpus_per_engine: float | None = None
    cpu_threads: int | None = None
    """Intra-op threads of each CPU engine; None: derived like ``actor.torch_threads``."""
    placement: Literal["colocated", "disaggregated"] = "disaggregated"
    bucket_bytes: int = 512 * 2**20
    """Weight-sync bucket size."""
    weight_transport: Literal["auto", "object_store", "broadcast", "cuda_ipc"] = "auto"
    """How weights reach the engines: auto = object store on CPU, NCCL broadcast (disaggregated)
    or CUDA IPC (colocated) on GPUs; see rlrt_megatron.cluster.sync."""
    sleep_level: int = 1
    """Colocated: vLLM sleep level while the trainer runs (1 offloads weights, 2 drops them)."""
    mode: Literal["sync", "one_step_off"] = "sync"
    """sync: step t's rollouts come from the weights of step t (on-policy). one_step_off: the
    engines generate step t+1's rollouts while step t updates (disaggregated placement only: the
    colocated engines sleep during the update), so they are one weight version stale; the scoring
    pass gives π_old and the truncated importance correction (engine log-probs) covers the lag."""

    def __post_init__(self) -> None:
        # Checked at config load, before Ray or any engine starts.
        if self.mode == "one_step_off" and self.placement == "colocated":
            raise ValueError(
                "rollout.mode=one_step_off needs rollout.placement=disaggregated: colocated "
                "engines sleep while the trainer updates, so nothing can overlap"
            )


@dataclass(frozen=True, kw_only=True)
class EvalSection:
    every: int = 0
    """Evaluate every N steps (0: only before and after training, if eval files are given)."""
    n: int = 1
    """Samples per eval problem."""
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_response_tokens: int = 38912


@dataclass(frozen=True, kw_only=True)
class TrainerSection:
    steps: int
    run_dir: str
    resume: str = "auto"
    """auto: continue from the run folder's newest intact checkpoint if any; never (alias none):
    start fresh, refused if the run folder holds checkpoints unless ``overwrite``; or a path."""
    overwrite: bool = False
    """With resume=never: delete the run folder's previous checkpoints, metrics, evaluations
    and summary before starting (without it a fresh start over an old run is refused)."""
    save_every: int = 10
    keep_last: int | None = None
    """Keep only this many checkpoints (oldest deleted after each save); None keeps all."""
    save_hf: bool = True
    """Also write each checkpoint's policy weights as a HF folder ``step_N/hf`` (what `rlrt eval`,
    `rlrt analyze` and vLLM load); costs one weight export per save."""
    seed: int = 0
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (no signal); off in the paper."""
    console: bool = True


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig
    trainer: TrainerSection
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    actor: ActorSection = field(default_factory=ActorSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.run_dir)

    @property
    def lr(self) -> float:
        lr = self.actor.optimizer.lr
        return self.algorithm.spec.defaults.lr if lr is None else lr


def load_run_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """The run config from a YAML file (with its ``base:`` chain) and ``key=value`` overrides."""
    return load_config(RunConfig, path, overrides)
