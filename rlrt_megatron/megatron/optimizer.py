"""AdamW through megatron-core: its (distributed) optimizer plus its LR / weight-decay scheduler.

Megatron keeps per-group multipliers (``wd_mult`` = 0 for biases and 1-D parameters such as norm
weights) that only take effect when ``OptimizerParamScheduler.step`` writes ``lr`` and
``weight_decay`` into the parameter groups; without the scheduler every group would decay. So the
two are built together, and the scheduler has already been applied for step 0 when this returns.

Which steps the schedule counts (``AdamWConfig.schedule_unit``): the paper's Table 5 "warmup
steps 10" is verl's ``lr_warmup_steps``, which counts *training (RL) steps*: verl's actor worker
calls ``lr_scheduler.step()`` once per ``update_actor``, after all of the step's mini-batches
(verl/workers/fsdp_workers.py), so the LR is constant within an RL step. With ``rl_step`` (the
default) `RLStepScheduler` reproduces that: the update step's per-mini-batch ``scheduler.step(1)``
calls are ignored and the actor calls `RLStepScheduler.end_update` once per RL update. RL step
n (1-based) then trains every mini-batch at ``lr · min(n − 1, W) / W`` during a W-step warm-up
(Megatron's linear warm-up from 0 at step 0, which equals verl's
``get_constant_schedule_with_warmup``: 0 at the first step, the full LR from step W + 1), and
any decay counts RL steps too. ``optimizer_step`` is Megatron-LM's convention (one schedule step
per optimizer step): with 2 mini-batches per RL step a 10-step warm-up would end after 5 RL steps.
An RL update whose optimizer steps were all skipped (non-finite gradients) still advances the
schedule, as in verl, where the scheduler steps whatever the update did.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch.distributed as dist

ScheduleUnit = Literal["rl_step", "optimizer_step"]
SCHEDULE_UNITS: tuple[str, ...] = typing.get_args(ScheduleUnit)
DecayStyle = Literal["constant", "linear", "cosine"]
DECAY_STYLES: tuple[str, ...] = typing.get_args(DecayStyle)


@dataclass(frozen=True, kw_only=True)
class AdamWConfig:
    """AdamW with decoupled weight decay, global-norm clipping, warmup and LR decay.

    Also the run config's ``actor.optimizer`` section (`rlrt_megatron.trainer.config`).

    Attributes:
        lr: peak learning rate. None: not chosen here; whoever builds the optimizer fills it in
            first (the trainer: the method's default, `RunConfig.lr`); `build_optimizer` refuses
            None.
        min_lr: floor of the decay (``linear`` / ``cosine``).
        warmup_steps: linear warmup from 0 to ``lr``; Megatron's step 0 uses the warmup's
            starting value (0) when this is > 0.
        decay_style: ``constant`` after warmup, or ``linear`` / ``cosine`` down to ``min_lr`` at
            ``decay_steps``.
        decay_steps: length of the decay (must exceed ``warmup_steps``).
        weight_decay: decoupled weight decay; never applied to biases and 1-D parameters.
        betas: Adam's (beta1, beta2).
        eps: Adam's epsilon.
        clip_grad: max global L2 norm of the gradients (0 disables clipping).
        use_distributed_optimizer: shard optimizer state over DP (the model must be wrapped with
            a DDP config with the same setting).
        schedule_unit: what ``warmup_steps`` / ``decay_steps`` count: ``rl_step`` (one per RL
            update, the paper's / verl's convention; see the module doc) or ``optimizer_step``
            (one per mini-batch).
    """

    lr: float | None = None
    min_lr: float = 0.0
    warmup_steps: int = 0
    decay_style: DecayStyle = "constant"
    decay_steps: int = 1_000_000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True
    schedule_unit: ScheduleUnit = "rl_step"

    def __post_init__(self) -> None:
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise ValueError(
                f"schedule_unit must be one of {SCHEDULE_UNITS}, not {self.schedule_unit!r}"
            )
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0 (or None: chosen by the caller), got {self.lr}")
        if self.min_lr < 0 or (self.lr is not None and self.min_lr > self.lr):
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if not 0 <= self.warmup_steps < self.decay_steps:
            raise ValueError("need 0 <= warmup_steps < decay_steps")
        if self.decay_style not in DECAY_STYLES:
            raise ValueError(f"decay_style must be one of {DECAY_STYLES}, not {self.decay_style!r}")
        if self.weight_decay < 0 or self.clip_grad < 0 or self.eps <= 0:
            raise ValueError("weight_decay and clip_grad must be >= 0 and eps > 0")


class RLStepScheduler:
    """Megatron's ``OptimizerParamScheduler`` advanced per RL update or per optimizer step.

    The update step (`rlrt_megatron.megatron.train_step.train_step`) calls ``step(1)`` after every
    optimizer step, the actor calls `end_update` once after each RL update; ``unit`` decides which
    of the two advances the schedule (see the module doc). ``state_dict`` is the wrapped
    scheduler's plus ``schedule_unit``, so that a checkpoint cannot be resumed counting the other
    unit. Everything else (``num_steps``, ``get_lr``, ...) is the wrapped scheduler's.
    """

    def __init__(self, scheduler: Any, unit: ScheduleUnit = "rl_step") -> None:
        if unit not in SCHEDULE_UNITS:
            raise ValueError(f"schedule_unit must be one of {SCHEDULE_UNITS}, not {unit!r}")
        self.scheduler = scheduler
        self.unit = unit

    def step(self, increment: int = 1) -> None:
        """After an optimizer step: advances the schedule only when it counts optimizer steps."""
        if self.unit == "optimizer_step":
            self.scheduler.step(increment)

    def end_update(self) -> None:
        """After an RL update (all its mini-batches): advances the schedule by one RL step."""
        if self.unit == "rl_step":
            self.scheduler.step(1)

    def state_dict(self) -> dict:
        return {**self.scheduler.state_dict(), "schedule_unit": self.unit}

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        # Checkpoints written before the unit was recorded counted optimizer steps.
        saved = state.pop("schedule_unit", "optimizer_step")
        moving = int(state.get("num_steps", 0)) > 0 and (
            int(state.get("lr_warmup_steps", 0)) > 0 or state.get("lr_decay_style") != "constant"
        )
        if saved != self.unit and moving:
            raise ValueError(
                f"the checkpoint's LR schedule counts {saved}s (num_steps="
                f"{state.get('num_steps')}), this run counts {self.unit}s: resume with "
                f"actor.optimizer.schedule_unit={saved}"
            )
        self.scheduler.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.scheduler, name)


def _check_lr_set(config: AdamWConfig) -> None:
    if config.lr is None:
        raise ValueError("AdamWConfig.lr is None: set the learning rate before building")


def build_scheduler(optimizer: Any, config: AdamWConfig) -> RLStepScheduler:
    """The LR / weight-decay schedule of ``optimizer`` (anything with ``param_groups``), applied
    for step 0; see `RLStepScheduler` for what its steps count."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    _check_lr_set(config)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if config.warmup_steps else config.lr,
        max_lr=config.lr,
        min_lr=config.min_lr,
        lr_warmup_steps=config.warmup_steps,
        lr_decay_steps=config.decay_steps,
        lr_decay_style=config.decay_style,
        start_wd=config.weight_decay,
        end_wd=config.weight_decay,
        wd_incr_steps=config.decay_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
    )
    return RLStepScheduler(scheduler, config.schedule_unit)


def build_optimizer(model: Any, config: AdamWConfig) -> tuple[Any, RLStepScheduler]:
    """Megatron optimizer and its schedule (`build_scheduler`) for a DDP-wrapped model.

    ``model`` is a :class:`~rlrt_megatron.models.qwen3_megatron.Qwen3MegatronModel` built with
    ``wrap_with_ddp=True``.
    """
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    _check_lr_set(config)
    ddp_config = getattr(model.chunks[0], "ddp_config", None)
    if ddp_config is None:
        raise ValueError("build the model with wrap_with_ddp=True before building its optimizer")
    if ddp_config.use_distributed_optimizer != config.use_distributed_optimizer:
        raise ValueError(
            f"use_distributed_optimizer={config.use_distributed_optimizer} but the model's DDP "
            f"config has use_distributed_optimizer={ddp_config.use_distributed_optimizer}"
        )
    mconfig = model.config
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",  # with decoupled_weight_decay (the default): AdamW
            lr=config.lr,
            min_lr=config.min_lr,
            weight_decay=config.weight_decay,
            adam_beta1=config.betas[0],
            adam_beta2=config.betas[1],
            adam_eps=config.eps,
            clip_grad=config.clip_grad,
            use_distributed_optimizer=config.use_distributed_optimizer,
            bf16=bool(mconfig.bf16),
            fp16=bool(mconfig.fp16),
            params_dtype=mconfig.params_dtype,
        ),
        model.chunks,
        # parallel.initialize_parallel creates megatron's extra gloo groups only when the main
        # backend is not gloo already.
        use_gloo_process_groups=dist.get_backend() != "gloo",
    )
    return optimizer, build_scheduler(optimizer, config)
