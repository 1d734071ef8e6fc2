"""The policy actor of one rank: model, optimizer, scoring pass, update step, weight export.

    actor = PolicyActor(ActorConfig(hf_path=..., parallel=ParallelConfig(tensor_parallel=2),
                                    optimizer=AdamWConfig(lr=1e-6, warmup_steps=10)))
    scores = actor.score(prompts, responses, teacher_prompts=contexts)   # old + teacher log-probs
    metrics = actor.train_step(batch, UpdateConfig(method="rlrt", mini_batches=2))
    for name, tensor in actor.export_hf_weights(): ...                    # weight sync

Every rank of the world constructs one and calls the same methods with the same arguments
(the collectives of TP, PP and DP run inside). Which weights score the teacher view is the
``teacher_weights`` option (see :mod:`.teacher_weights`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from rlrt_megatron.megatron.forward import Ids
from rlrt_megatron.megatron.host_allocator import (
    HostAllocator,
    apply_host_allocator,
    resolve_host_allocator,
)
from rlrt_megatron.megatron.optimizer import AdamWConfig, build_optimizer
from rlrt_megatron.megatron.parallel import (
    ParallelConfig,
    ParallelState,
    current_parallel_state,
    initialize_parallel,
)
from rlrt_megatron.megatron.scoring import ScoreResult, score_rollouts
from rlrt_megatron.megatron.serial_collectives import serialize_param_gathers
from rlrt_megatron.megatron.teacher_weights import TeacherWeights, TeacherWeightsMode
from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig, train_step
from rlrt_megatron.models.qwen3_bridge import ATTENTION_BACKENDS, AttentionBackend
from rlrt_megatron.models.qwen3_megatron import build_qwen3_model, export_hf_weights

# refresh(rows, teacher scores of those rows with the current weights) -> replacement row
# tensors of the mini-batch (e.g. {"token_advantages": ...}); see TrainBatch / ROW_TENSORS.
RecomputeMode = Literal["none", "selective", "full"]
RECOMPUTE_MODES: tuple[str, ...] = typing.get_args(RecomputeMode)

TeacherRefresh = Callable[[list[int], ScoreResult], dict[str, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class ActorConfig:
    """Attributes:
    hf_path: HF Qwen3 checkpoint folder.
    parallel: the TP x PP x CP layout (DP is the rest of the world).
    optimizer: AdamW, warmup, weight decay, grad clipping.
    dtype: parameter dtype (float32 or bfloat16).
    sequence_parallel: Megatron sequence parallelism (TP > 1).
    max_tokens: token budget of a micro-batch (scoring and, by default, the update): real
        tokens with ``packing``, padded tokens (sequences x longest) without.
    packing: packed micro-batches (sequences back to back, attention and RoPE per sequence;
        no compute on padding). Needs attention "sdpa" or "te"; required for context
        parallelism. ``False``: right-padded micro-batches.
    teacher_weights: behavior | current | initial | ema.
    ema_rate: the EMA's rate (teacher_weights="ema").
    offload_teacher: keep the initial/EMA teacher copy in CPU memory.
    temperature: sampling temperature of the rollouts (logits are divided by it).
    recompute: activation recomputation in the update's backward pass: "none" keeps every
        layer's activations; "selective" recomputes only core attention (the softmax
        activations, the largest per-token term at long sequences); "full" keeps only each
        block's input and recomputes the block (Megatron's "full"/"uniform" recomputation),
        which is what paper-scale micro-batches need (`rlrt plan` assumes it). Same numbers,
        more compute: the forward runs twice for recomputed layers.
    recompute_num_layers: with "full", how many consecutive layers form one recomputed block.
    attention: core attention of the layers: "auto" (Transformer Engine when importable, else
        PyTorch SDPA), "te", "sdpa" (fused kernels, no [s, s] score tensor) or "local"
        (megatron-core's unfused DotProductAttention).
    compile_elementwise: fuse the layers' RMSNorms, SwiGLU and RoPE (forward and backward) with
        ``torch.compile`` (`rlrt_megatron.models.compiled_elementwise`, `...compiled_rope`): same
        numbers to float32
        rounding, fewer passes over memory; costs a compilation per process at first use. For
        the local spec (no Transformer Engine, which fuses these itself). Run on CPU only so
        far; the CUDA (Triton) path is untested.
    host_allocator: how this rank's process gets host memory from glibc
        (`rlrt_megatron.megatron.host_allocator`): "retain" keeps freed memory for reuse (no
        per-step page faults of the update's activations), "system" leaves glibc as it is,
        "auto" is "retain" without CUDA and "system" with it. Process-wide, set when the actor
        is built.
    """

    hf_path: str | Path
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: AdamWConfig = field(default_factory=lambda: AdamWConfig(lr=1e-6))
    dtype: torch.dtype = torch.bfloat16
    sequence_parallel: bool = False
    max_tokens: int = 8192
    packing: bool = True
    teacher_weights: TeacherWeightsMode = "behavior"
    ema_rate: float = 0.01
    offload_teacher: bool = True
    temperature: float = 1.0
    recompute: RecomputeMode = "none"
    recompute_num_layers: int = 1
    attention: AttentionBackend = "auto"
    compile_elementwise: bool = False
    host_allocator: HostAllocator = "auto"

    def __post_init__(self) -> None:
        resolve_host_allocator(self.host_allocator, cuda=False)  # raises on an unknown mode
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention must be one of {ATTENTION_BACKENDS}, not {self.attention!r}"
            )
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, not {self.recompute!r}")
        if self.recompute_num_layers < 1:
            raise ValueError(f"recompute_num_layers must be >= 1, not {self.recompute_num_layers}")
        if self.parallel.context_parallel > 1 and not self.packing:
            raise ValueError("context parallelism splits packed sequences: it needs packing=True")
        if self.packing and self.attention == "local":
            raise ValueError(
                "attention='local' has no packed-sequence support: use 'sdpa'/'te'/'auto' or "
                "packing=False"
            )


def recompute_overrides(mode: RecomputeMode, num_layers: int = 1) -> dict[str, object]:
    """The ``TransformerConfig`` fields of an activation-recomputation mode (see `ActorConfig`)."""
    if mode == "none":
        return {}
    if mode == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    if mode == "full":
        return {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": num_layers,
        }
    raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, not {mode!r}")


class PolicyActor:
    """One rank's share of the policy. Initializes megatron's parallel state unless it is
    already initialized with the same layout."""

    def __init__(self, config: ActorConfig) -> None:
        from megatron.core import parallel_state as mpu
        from megatron.core.distributed import DistributedDataParallelConfig

        self.config = config
        # Before the model exists: its parameters and the update's activations then come from
        # the heap that the setting keeps.
        self.retains_host_memory = apply_host_allocator(
            config.host_allocator, cuda=torch.cuda.is_available()
        )
        if mpu.model_parallel_is_initialized():
            state = current_parallel_state()
            layout = (state.tensor_parallel, state.pipeline_parallel, state.context_parallel)
            wanted = (
                config.parallel.tensor_parallel,
                config.parallel.pipeline_parallel,
                config.parallel.context_parallel,
            )
            if layout != wanted:
                raise ValueError(f"parallel state is initialized with TP, PP, CP = {layout}")
        else:
            initialize_parallel(config.parallel)
        self.model = build_qwen3_model(
            config.hf_path,
            dtype=config.dtype,
            sequence_parallel=config.sequence_parallel,
            config_overrides=recompute_overrides(config.recompute, config.recompute_num_layers),
            attention=config.attention,
            packing=config.packing,
            wrap_with_ddp=True,
            ddp_config=DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=False,
                use_distributed_optimizer=config.optimizer.use_distributed_optimizer,
            ),
        )
        if config.compile_elementwise:
            from rlrt_megatron.models.compiled_elementwise import compile_elementwise

            for chunk in self.model.chunks:
                compile_elementwise(chunk)
        self.optimizer, self.scheduler = build_optimizer(self.model, config.optimizer)
        serialize_param_gathers(self.model.chunks)  # see serial_collectives: CPU ranks' matmuls
        self.teacher = TeacherWeights(
            self.model,
            config.teacher_weights,
            ema_rate=config.ema_rate,
            offload=config.offload_teacher,
        )

    # -- accessors ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The real vocabulary (log-probs are over these ids)."""
        return self.model.vocab_size

    @property
    def padded_vocab_size(self) -> int:
        return self.model.padded_vocab_size

    @property
    def parallel_state(self) -> ParallelState:
        return current_parallel_state()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- passes ------------------------------------------------------------------------------

    def score(
        self,
        prompts: Sequence[Ids],
        responses: Sequence[Ids],
        *,
        teacher_prompts: Sequence[Ids | None] | None = None,
        topk: int = 0,
        teacher_entropy: bool = False,
    ) -> ScoreResult:
        """Forward-only scores of the rollouts (see :func:`.scoring.score_rollouts`): the student
        view with the current weights, the teacher view with the configured teacher weights."""
        return score_rollouts(
            self.model,
            prompts,
            responses,
            teacher_prompts=teacher_prompts,
            topk=topk,
            teacher_entropy=teacher_entropy,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            teacher_swap=self.teacher.swapped if self.teacher.separate else None,
        )

    def train_step(
        self,
        batch: TrainBatch,
        update: UpdateConfig,
        *,
        refresh_teacher: TeacherRefresh | None = None,
    ) -> list[dict[str, float]]:
        """One update over ``batch``; one metrics dict per optimizer step. Afterwards the LR
        schedule advances one RL step (`RLStepScheduler.end_update`; a no-op when it counts
        optimizer steps).

        Distillation methods (``needs_topk``: SDPO, SRPO) read the teacher in the update: with
        ``behavior``/``current`` the policy's current weights, with ``initial``/``ema`` the
        teacher's own weights, swapped in for a forward-only pass per micro-batch (see
        :mod:`.train_step`).

        With ``teacher_weights="current"`` and ``refresh_teacher`` given, each mini-batch's
        teacher view is re-scored with the current weights first and ``refresh_teacher(rows,
        scores)`` returns the row tensors to use instead (typically the token advantages
        recomputed from the new teacher log-probs, and the teacher entropy).
        """
        if update.temperature != self.config.temperature:
            raise ValueError(
                f"update temperature {update.temperature} != actor temperature "
                f"{self.config.temperature}"
            )
        if batch.reweighting is not None and batch.reweighting.teacher_logprobs is None:
            batch = self._with_teacher_view_logprobs(batch)
        before = None
        if self.teacher.rescore_per_minibatch:
            if refresh_teacher is None:
                raise ValueError("teacher_weights='current' needs refresh_teacher")
            if batch.teacher_prompts is None:
                raise ValueError("teacher_weights='current' needs the batch's teacher prompts")

            def before(rows: list[int]) -> dict[str, torch.Tensor]:
                scores = self.score(
                    [batch.prompts[r] for r in rows],
                    [batch.responses[r] for r in rows],
                    teacher_prompts=[batch.teacher_prompts[r] for r in rows],
                    teacher_entropy=True,
                )
                return refresh_teacher(rows, scores)

        metrics = train_step(
            self.model,
            self.optimizer,
            self.scheduler,
            batch,
            update,
            before_minibatch=before,
            after_optimizer_step=self.teacher.after_optimizer_step,
            # Distillation (SDPO/SRPO) reads the teacher at the student's current top-k ids in
            # the update itself: with initial/EMA weights, from a teacher pass of their own.
            teacher_swap=self.teacher.swapped if self.teacher.separate else None,
        )
        # One RL update done: the LR schedule counts RL steps by default (paper Table 5 / verl).
        self.scheduler.end_update()
        return metrics

    def _with_teacher_view_logprobs(self, batch: TrainBatch) -> TrainBatch:
        """``batch`` with its `DeferredReweighting`'s teacher log-probs, which it left to the actor
        (``None``), scored here: the teacher rows' teacher views (teacher prompt + response)
        forward-only with the policy's weights, which are the behaviour policy's under the
        on-policy shortcut (the only place the trainer defers Eq. 6–7 to the update). Scored in
        the update's call, log P_T never travels rank → driver → rank."""
        reweighting = batch.reweighting
        if self.teacher.separate:
            raise ValueError(
                "the teacher view is scored with the policy's weights for the update's own "
                "reweighting: it needs teacher_weights='behavior'"
            )
        rows = reweighting.has_teacher.nonzero().flatten().tolist()
        teacher = torch.zeros(batch.response_mask.shape)
        if rows:
            view = self.score(
                [batch.teacher_prompts[r] for r in rows], [batch.responses[r] for r in rows]
            )
            teacher[rows, : view.student_log_prob.shape[1]] = view.student_log_prob
        return replace(batch, reweighting=replace(reweighting, teacher_logprobs=teacher))

    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(hf_name, full tensor)`` for every weight; every rank must drain it in order."""
        return export_hf_weights(self.model)
