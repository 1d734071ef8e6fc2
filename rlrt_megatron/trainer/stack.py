"""Building the run's components from its config, and the checkpoint calls on the ranks.

The component configs (`ActorConfig`, `AdamWConfig`, `PolicyGroupConfig`, `EngineConfig`,
`EnginePoolConfig`, `PlacementConfig`, `SamplingConfig`, `UpdateConfig`) are built here from a
`RunConfig`, by `component`: each field takes the section key of the same name (or the name in
`RENAMED`), and the values that follow from several sections are computed
here and nowhere else (`DERIVED` names each with its derivation). A component field with neither a
key nor a derivation is an error, so a new setting cannot be left unreachable from YAML
(tests/trainer/test_config_coverage.py walks them all).

`build_placement` turns a `RunConfig` into the Megatron policy group and the vLLM engine pool,
placed colocated or disaggregated. The `*_on_rank` functions run inside each trainer rank (through
`PolicyGroup.run_all`): checkpoints are collective, every rank writes its own shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from rlrt_megatron.cluster.in_rank_engines import InRankConfig, InRankPlacement
from rlrt_megatron.cluster.placement import Placement, PlacementConfig
from rlrt_megatron.cluster.policy_group import PolicyGroupConfig
from rlrt_megatron.cluster.pool import EnginePoolConfig
from rlrt_megatron.megatron.actor import ActorConfig
from rlrt_megatron.megatron.optimizer import AdamWConfig
from rlrt_megatron.megatron.train_step import UpdateConfig
from rlrt_megatron.rollout.engine import EngineConfig
from rlrt_megatron.rollout.sampling import SamplingConfig
from rlrt_megatron.trainer.config import RunConfig

C = TypeVar("C")

RENAMED: dict[str, str] = {
    "EngineConfig.tensor_parallel_size": "rollout.tensor_parallel",
    "PlacementConfig.mode": "rollout.placement",
    "PlacementConfig.strategy": "rollout.colocated_strategy",
    "PlacementConfig.timeout_s": "rollout.colocated_timeout_s",
    "SamplingConfig.max_tokens": "max_response_tokens",  # rollout.* and eval.*
}
"""Component fields whose YAML key has another name: ``Class.field`` → key (under the section the
component is built from). tensor_parallel and max_response_tokens are the keys' names from before
the components were composed; placement and colocated_* tell PlacementConfig's fields apart from
``rollout.mode`` (the feed) and from the engine pool's own placement_strategy / _timeout_s."""

DERIVED: dict[str, str] = {
    "ActorConfig.hf_path": "model.path",
    "ActorConfig.temperature": "rollout.temperature (the scoring and the update divide the "
    "logits by the temperature the rollouts were sampled with)",
    "ActorConfig.optimizer": "actor.optimizer with its lr resolved (AdamWConfig.lr)",
    "AdamWConfig.lr": "the key actor.optimizer.lr; when null, the method's default "
    "(algorithm.method's registry defaults; learning_rate)",
    "PolicyGroupConfig.actor": "the ActorConfig above",
    "PolicyGroupConfig.num_ranks": "actor.parallel TP x PP x CP x actor.data_parallel",
    "EngineConfig.model_path": "model.path",
    "EngineConfig.max_model_len": "data.max_prompt_tokens + max(rollout.max_response_tokens, "
    "eval.max_response_tokens when data.eval_files are given)",
    "EngineConfig.seed": "trainer.seed (requests carry their own seeds; this is vLLM's default)",
    "EngineConfig.enable_sleep_mode": "false here; the colocated placement sets it on GPUs "
    "(rlrt_megatron.cluster.placement.colocated_configs)",
    "EnginePoolConfig.engine": "the EngineConfig above",
    "SamplingConfig.n": "rollouts: data.rollouts_per_prompt (K); the evaluation's is the key "
    "eval.n",
    "SamplingConfig.seed": "rollouts: trainer.seed x 1000003 + step x prompts per step (a resumed "
    "run samples what the uninterrupted one would); evaluation: trainer.seed",
    "UpdateConfig.method": "algorithm.method",
    "UpdateConfig.loss": "algorithm (AlgorithmConfig.loss_config)",
    "UpdateConfig.topk": "algorithm.distill_topk; null: the method's default",
    "UpdateConfig.srpo_beta": "algorithm.srpo_beta; null: the method's default",
    "UpdateConfig.temperature": "rollout.temperature (as ActorConfig.temperature)",
}
"""Component fields computed from the run config rather than set by a key: ``Class.field`` →
the derivation. `component` refuses a derived value that is not listed here."""


def component(cls: type[C], section: Any, prefix: str, **derived: Any) -> C:
    """``cls`` built from the run config's ``section`` (at YAML key ``prefix``): each field takes
    the section's key of the same name (or `RENAMED`), except the ``derived`` values (which must
    be listed in `DERIVED`). A field with neither is a programming error, named."""
    name = cls.__name__
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        qualified = f"{name}.{f.name}"
        if f.name in derived:
            if qualified not in DERIVED:
                raise TypeError(f"{qualified} is derived but not listed in stack.DERIVED")
            kwargs[f.name] = derived.pop(f.name)
            continue
        key = RENAMED.get(qualified, f.name).removeprefix(f"{prefix}.")
        if not hasattr(section, key):
            raise TypeError(f"{qualified} has no YAML key ({prefix}.{key}) and is not derived")
        kwargs[f.name] = getattr(section, key)
    if derived:
        raise TypeError(f"{name} has no fields {sorted(derived)}")
    try:
        return cls(**kwargs)
    except ValueError as error:  # the component's own check: say which section it came from
        raise ValueError(f"{prefix} ({name}): {error}") from error


# -- derived values ---------------------------------------------------------------------------


def learning_rate(config: RunConfig) -> float:
    """The peak learning rate: ``actor.optimizer.lr``, or the method's default (`RunConfig.lr`,
    where it is computed: the run config cannot import this module)."""
    return config.lr


def max_model_len(config: RunConfig) -> int:
    """The engines' context: the longest prompt plus the longest response of a rollout or of
    the in-training evaluation (when eval files are given)."""
    return config.data.max_prompt_tokens + max(
        config.rollout.max_response_tokens, _eval_tokens(config)
    )


# -- the component configs --------------------------------------------------------------------


def optimizer_config(config: RunConfig) -> AdamWConfig:
    """``actor.optimizer`` with its learning rate resolved (`learning_rate`)."""
    lr = learning_rate(config)
    try:
        return dataclasses.replace(config.actor.optimizer, lr=lr)
    except ValueError as error:
        raise ValueError(f"actor.optimizer (lr {lr:g}): {error}") from error


def actor_config(config: RunConfig) -> ActorConfig:
    return component(
        ActorConfig,
        config.actor,
        "actor",
        hf_path=config.model.path,
        temperature=config.rollout.temperature,
        optimizer=optimizer_config(config),
    )


def policy_group_config(config: RunConfig) -> PolicyGroupConfig:
    built = component(
        PolicyGroupConfig,
        config.actor,
        "actor",
        actor=actor_config(config),
        num_ranks=config.actor.parallel.model_parallel * config.actor.data_parallel,
    )
    return dataclasses.replace(built, torch_threads=cpu_threads(config)[0])  # null resolved


def engine_config(config: RunConfig) -> EngineConfig:
    built = component(
        EngineConfig,
        config.rollout,
        "rollout",
        model_path=config.model.path,
        max_model_len=max_model_len(config),
        seed=config.trainer.seed,
        enable_sleep_mode=False,
    )
    return dataclasses.replace(built, cpu_threads=cpu_threads(config)[1])  # null resolved


def cpu_threads(config: RunConfig) -> tuple[int | None, int | None]:
    """Intra-op threads of (each trainer rank, each engine) on CPU-only machines; None where the
    process runs on GPUs (torch's default there) or where the config says.

    Derived unless ``actor.torch_threads`` / ``rollout.cpu_threads`` are given: in sync mode the
    rollout and the update alternate, so each takes the node's cores (``ray.num_cpus``, else
    this machine's count) divided among its own processes; with ``rollout.mode=one_step_off``
    they run at once and the cores are divided among ranks and engines together. (Ray alone
    would give a process with a fractional CPU share one thread, leaving cores idle.)"""
    cores = config.ray.num_cpus or os.cpu_count() or 1
    ranks = config.actor.parallel.model_parallel * config.actor.data_parallel
    engines = config.rollout.num_engines * config.rollout.tensor_parallel
    if config.rollout.backend == "in_rank":
        engines = 0  # the ranks generate: no engine process shares the cores
    overlap = config.rollout.mode == "one_step_off"
    rank_threads = config.actor.torch_threads
    if rank_threads is None and not config.actor.gpus_per_rank:
        rank_threads = max(1, cores // (ranks + engines if overlap else ranks))
    engine_threads = config.rollout.cpu_threads
    if engine_threads is None and not config.rollout.gpus_per_engine:
        engine_threads = max(1, cores // max(1, ranks + engines if overlap else engines))
    return rank_threads, engine_threads


def in_rank_config(config: RunConfig) -> InRankConfig:
    """``rollout.backend=in_rank``'s settings: the engines' length limit and log-prob mode."""
    return InRankConfig(
        model_path=config.model.path,
        max_model_len=max_model_len(config),
        logprobs_mode=config.rollout.logprobs_mode,
    )


def engine_pool_config(config: RunConfig) -> EnginePoolConfig:
    return component(EnginePoolConfig, config.rollout, "rollout", engine=engine_config(config))


def placement_config(config: RunConfig) -> PlacementConfig:
    return component(PlacementConfig, config.rollout, "rollout")


def rollout_sampling(config: RunConfig, step: int, num_prompts: int) -> SamplingConfig:
    """The sampling of step ``step``'s rollouts (``num_prompts`` prompts, K samples each)."""
    return component(
        SamplingConfig,
        config.rollout,
        "rollout",
        n=config.data.rollouts_per_prompt,
        seed=config.trainer.seed * 1_000_003 + step * num_prompts,  # resumable sampling
    )


def evaluation_sampling(config: RunConfig) -> SamplingConfig:
    return component(SamplingConfig, config.eval, "eval", seed=config.trainer.seed)


def update_config(config: RunConfig) -> UpdateConfig:
    alg = config.algorithm
    return component(
        UpdateConfig,
        config.actor,
        "actor",
        method=alg.method,
        loss=alg.loss_config(),
        topk=alg.spec.defaults.distill_topk if alg.distill_topk is None else alg.distill_topk,
        srpo_beta=alg.spec.defaults.srpo_beta if alg.srpo_beta is None else alg.srpo_beta,
        temperature=config.rollout.temperature,
    )


def component_configs(config: RunConfig) -> Mapping[str, Any]:
    """Every component config the run builds (for checks before anything starts)."""
    return {
        "policy_group": policy_group_config(config),
        "engine_pool": engine_pool_config(config),
        "placement": placement_config(config),
        "rollout_sampling": rollout_sampling(config, 0, config.data.prompts_per_step),
        "eval_sampling": evaluation_sampling(config),
        "update": update_config(config),
    }


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


def build_placement(config: RunConfig) -> Placement | InRankPlacement:
    """The policy group (TP × PP × CP × DP Megatron ranks) and the engine pool, placed per
    config; with ``rollout.backend=in_rank`` the policy group alone, its ranks generating."""
    check_eval_fits(config)
    if config.rollout.backend == "in_rank":
        return InRankPlacement(policy_group_config(config), in_rank_config(config))
    return Placement(
        policy_group_config(config), engine_pool_config(config), placement_config(config)
    )


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
