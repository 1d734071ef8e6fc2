"""Building the run's distributed pieces from its config, and the checkpoint calls on the ranks.

`build_placement` turns a `RunConfig` into the Megatron policy group and the vLLM engine pool,
placed colocated or disaggregated. The `*_on_rank` functions run inside each trainer rank (through
`PolicyGroup.run_all`): checkpoints are collective, every rank writes its own shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlrt_megatron.cluster.placement import Placement, PlacementConfig
from rlrt_megatron.cluster.policy_group import PolicyGroupConfig
from rlrt_megatron.cluster.pool import EnginePoolConfig
from rlrt_megatron.megatron.actor import ActorConfig
from rlrt_megatron.megatron.optimizer import AdamWConfig
from rlrt_megatron.rollout.engine import EngineConfig
from rlrt_megatron.trainer.config import RunConfig


def actor_config(config: RunConfig) -> ActorConfig:
    opt = config.actor.optimizer
    return ActorConfig(
        hf_path=config.model.path,
        parallel=config.actor.parallel,
        optimizer=AdamWConfig(
            lr=config.lr,
            warmup_steps=opt.warmup_steps,
            schedule_unit=opt.schedule_unit,
            weight_decay=opt.weight_decay,
            betas=opt.betas,
            eps=opt.eps,
            clip_grad=opt.clip_grad,
        ),
        dtype=config.actor.dtype,
        sequence_parallel=config.actor.sequence_parallel,
        max_tokens=config.actor.max_tokens,
        packing=config.actor.packing,
        teacher_weights=config.actor.teacher_weights,
        ema_rate=config.actor.ema_rate,
        temperature=config.rollout.temperature,
        recompute=config.actor.recompute,
        recompute_num_layers=config.actor.recompute_num_layers,
        attention=config.actor.attention,
    )


def engine_pool_config(config: RunConfig) -> EnginePoolConfig:
    r = config.rollout
    engine = EngineConfig(
        model_path=config.model.path,
        max_model_len=config.data.max_prompt_tokens
        + max(r.max_response_tokens, _eval_tokens(config)),
        dtype=r.dtype,
        tensor_parallel_size=r.tensor_parallel,
        seed=config.trainer.seed,
        gpu_memory_utilization=r.gpu_memory_utilization,
    )
    return EnginePoolConfig(
        engine=engine,
        num_engines=r.num_engines,
        cpus_per_engine=r.cpus_per_engine,
        gpus_per_engine=r.gpus_per_engine,
        bucket_bytes=r.bucket_bytes,
    )


def _eval_tokens(config: RunConfig) -> int:
    return config.eval.max_response_tokens if config.data.eval_files else 0


def check_eval_fits(config: RunConfig) -> None:
    """Refuse (ValueError with the reason) an in-training evaluation whose length cap, prompt +
    ``eval.max_response_tokens`` (the paper: 38912), does not fit the model; never lowered."""
    model_config = Path(config.model.path) / "config.json"
    if not config.data.eval_files or not model_config.is_file():
        return  # no evaluation, or no model yet (the engine reports a missing model)
    from rlrt_megatron.evaluation.runner import check_eval_length

    max_positions = json.loads(model_config.read_text()).get("max_position_embeddings")
    check_eval_length(
        config.data.max_prompt_tokens,
        config.eval.max_response_tokens,
        None if max_positions is None else int(max_positions),
        config.model.path,
    )


def build_placement(config: RunConfig) -> Placement:
    """The policy group (TP × PP × CP × DP Megatron ranks) and the engine pool, placed per
    config."""
    check_eval_fits(config)
    policy = PolicyGroupConfig(
        actor=actor_config(config),
        num_ranks=config.actor.parallel.model_parallel * config.actor.data_parallel,
        cpus_per_rank=config.actor.cpus_per_rank,
        gpus_per_rank=config.actor.gpus_per_rank,
    )
    placement = PlacementConfig(
        mode=config.rollout.placement,
        weight_transport=config.rollout.weight_transport,
        sleep_level=config.rollout.sleep_level,
    )
    return Placement(policy, engine_pool_config(config), placement)


def save_on_rank(actor: Any, run_dir: str, step: int, extra: dict, keep_last: int | None) -> str:
    """Collective checkpoint save of one rank's shards (model, optimizer, scheduler) and of its
    RNG state (Python, NumPy, torch CPU/CUDA, megatron's model-parallel stream: dropout)."""
    from rlrt_megatron.megatron.checkpoint import RNG_KEY, capture_rng_state, save_checkpoint

    path = save_checkpoint(
        run_dir,
        step,
        actor.model,
        actor.optimizer,
        actor.scheduler,
        extra=extra,
        rank_extra={RNG_KEY: capture_rng_state()},
        keep_last=keep_last,
    )
    return str(path)


def export_hf_on_rank(actor: Any, out_dir: str) -> str:
    """Collective HF export of the policy's current weights (rank 0 writes ``out_dir``)."""
    from rlrt_megatron.megatron.checkpoint import export_hf_folder

    return str(export_hf_folder(actor.model, out_dir))


def load_on_rank(actor: Any, path: str) -> dict:
    """Collective checkpoint load into one rank (its RNG state too, when saved at this layout:
    `restore_rank_rng`); returns the trainer's ``extra`` state."""
    from rlrt_megatron.megatron.checkpoint import load_checkpoint, restore_rank_rng

    loaded = load_checkpoint(path, actor.model, actor.optimizer, actor.scheduler)
    restore_rank_rng(loaded)
    return dict(loaded.extra, step=loaded.step)


def checkpoint_dir(config: RunConfig) -> Path:
    return config.run_dir / "checkpoints"
