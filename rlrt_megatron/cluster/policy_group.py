"""The trainer's Megatron ranks as one Ray worker group, driven from a single controller.

    group = PolicyGroup(PolicyGroupConfig(actor=ActorConfig(hf_path=..., parallel=...),
                                          num_ranks=8, gpus_per_rank=1))
    scores = group.score(prompts, responses, teacher_prompts=contexts)
    metrics = group.train_step(batch, UpdateConfig(method="rlrt"))
    sync_policy_weights(group, engine_pool)            # rlrt_megatron.cluster.sync

Each rank hosts one `PolicyActor`; every method here sends the same call to every rank (SPMD: the
TP/PP/DP collectives run inside) and returns rank 0's result. The actor's passes leave their
results on every rank (scores are gathered), so rank 0's is the whole batch's. A call's arguments
(a step's [B, T] tensors) go into Ray's object store once and every rank reads them from there;
of `score` and `train_step` only rank 0's result travels back (`WorkerGroup.call_all_first`).

Placement: by default the group makes its own placement group (`WorkerGroup`, disaggregated).
Given ``placement_group=`` it puts rank ``i`` into bundle ``bundle_indices[i]`` of a group made
by someone else, asking only for its own share of the bundle, so that engines can share the
bundles (colocation, `rlrt_megatron.cluster.placement`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlrt_megatron.cluster.worker_group import PlacementStrategy, WorkerGroup, WorkerGroupConfig


@dataclass(frozen=True, kw_only=True)
class PolicyGroupConfig:
    """Attributes:
    actor: the `rlrt_megatron.megatron.actor.ActorConfig` every rank builds its actor from.
    num_ranks: world size (TP * PP * DP).
    cpus_per_rank, gpus_per_rank: Ray resources of one rank (logical; fractions allowed).
    placement_strategy: Ray strategy of the group's own placement group (disaggregated only).
    torch_threads: intra-op threads per rank (None: torch's default, all cores).
    env: extra environment for every rank (NCCL settings, ...).
    """

    actor: Any
    num_ranks: int = 1
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    placement_strategy: PlacementStrategy = "PACK"
    placement_timeout_s: float = 120.0
    torch_threads: int | None = 1
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_ranks < 1:
            raise ValueError(f"num_ranks must be >= 1, got {self.num_ranks}")
        model_parallel = self.actor.parallel.model_parallel
        if self.num_ranks % model_parallel:
            raise ValueError(
                f"num_ranks={self.num_ranks} is not a multiple of TP*PP*CP={model_parallel}"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {self.torch_threads}")

    def worker_group_config(self) -> WorkerGroupConfig:
        return WorkerGroupConfig(
            num_workers=self.num_ranks,
            cpus_per_worker=self.cpus_per_rank,
            gpus_per_worker=self.gpus_per_rank,
            placement_strategy=self.placement_strategy,
            placement_timeout_s=self.placement_timeout_s,
            env=dict(self.env),
        )


def build_policy_actor(actor_config: Any, torch_threads: int | None) -> Any:
    """The factory every rank runs: a `PolicyActor` (imported here, inside the rank's process)."""
    import torch

    from rlrt_megatron.megatron.actor import PolicyActor

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)  # ranks share the node's cores with the engines
    return PolicyActor(actor_config)


def collect_hf_weights(actor: Any) -> dict[str, Any] | None:
    """Drain the export on every rank; rank 0 returns ``{hf_name: tensor}`` (clones), others
    None."""
    import torch.distributed as dist

    keep = dist.get_rank() == 0
    weights = {}
    for name, tensor in actor.export_hf_weights():
        if keep:
            weights[name] = tensor.detach().clone()
    return weights if keep else None


class PolicyGroup:
    """``num_ranks`` Ray actors, each hosting one `PolicyActor` of one torch.distributed world."""

    def __init__(
        self,
        config: PolicyGroupConfig,
        *,
        placement_group: Any | None = None,
        bundle_indices: Sequence[int] | None = None,
    ) -> None:
        self.config = config
        self.workers = WorkerGroup(
            config.worker_group_config(),
            placement_group=placement_group,
            bundle_indices=bundle_indices,
        )
        try:
            self.workers.setup(build_policy_actor, config.actor, config.torch_threads)
        except BaseException:
            self.workers.shutdown()
            raise

    @property
    def world_size(self) -> int:
        return self.workers.world_size

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        *,
        teacher_prompts: Sequence[Sequence[int] | None] | None = None,
        topk: int = 0,
        teacher_entropy: bool = False,
    ) -> Any:
        """`PolicyActor.score` on every rank; rank 0's `ScoreResult` ([B, T] tensors)."""
        return self.workers.call_all_first(
            "score",
            [list(p) for p in prompts],
            [list(r) for r in responses],
            teacher_prompts=None if teacher_prompts is None else list(teacher_prompts),
            topk=topk,
            teacher_entropy=teacher_entropy,
        )

    def train_step(self, batch: Any, update: Any) -> list[dict[str, float]]:
        """`PolicyActor.train_step` (a `TrainBatch`, an `UpdateConfig`) on every rank; rank 0's
        metrics, one dict per optimizer step."""
        return self.workers.call_all_first("train_step", batch, update)

    def hf_weights(self) -> dict[str, Any]:
        """The full HF state dict, in this process. A whole copy of the model through Ray: for
        checks and small models only; weight sync goes through `rlrt_megatron.cluster.sync`."""
        return self.workers.run_all(collect_hf_weights)[0]

    def run_all(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """``fn(policy_actor, *args, **kwargs)`` on every rank (``fn`` importable); all results."""
        return self.workers.run_all(fn, *args, **kwargs)

    def shutdown(self) -> None:
        self.workers.shutdown()

    def __enter__(self) -> PolicyGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
