"""AdamW through megatron-core: its (distributed) optimizer plus its LR / weight-decay scheduler.

Megatron keeps per-group multipliers (``wd_mult`` = 0 for biases and 1-D parameters such as norm
weights) that only take effect when ``OptimizerParamScheduler.step`` writes ``lr`` and
``weight_decay`` into the parameter groups; without the scheduler every group would decay. So the
two are built together, and the scheduler has already been applied for step 0 when this returns.

Training loop order (as in Megatron-LM): zero grads, forward-backward, ``optimizer.step()``, then
``scheduler.step(1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch.distributed as dist


@dataclass(frozen=True, kw_only=True)
class AdamWConfig:
    """AdamW with decoupled weight decay, global-norm clipping, warmup and LR decay.

    Attributes:
        lr: peak learning rate.
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
    """

    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    decay_style: Literal["constant", "linear", "cosine"] = "constant"
    decay_steps: int = 1_000_000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if not 0 <= self.warmup_steps < self.decay_steps:
            raise ValueError("need 0 <= warmup_steps < decay_steps")
        if self.decay_style not in ("constant", "linear", "cosine"):
            raise ValueError(f"unknown decay_style {self.decay_style!r}")
        if self.weight_decay < 0 or self.clip_grad < 0 or self.eps <= 0:
            raise ValueError("weight_decay and clip_grad must be >= 0 and eps > 0")


def build_optimizer(model: Any, config: AdamWConfig) -> tuple[Any, Any]:
    """Megatron optimizer and ``OptimizerParamScheduler`` for a DDP-wrapped model.

    ``model`` is a :class:`~rlrt_megatron.models.qwen3_megatron.Qwen3MegatronModel` built with
    ``wrap_with_ddp=True``.
    """
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

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
    return optimizer, scheduler
