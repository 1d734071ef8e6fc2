"""The interfaces the RL loop and the weight sync are written against, as typing Protocols.

The loop (`rlrt_megatron.trainer.loop.rl_step`) and `rlrt_megatron.cluster.sync` call a policy,
a pool of rollout engines, a grader and the placement holding the first two. The real classes
are `cluster.policy_group.PolicyGroup`, `cluster.pool.EnginePool`, `rewards.pool.RewardPool` and
`cluster.placement.Placement`; tests pass small fakes with the same methods. Naming the methods
here gives both a checked contract (a type checker flags a fake or a refactor that drifts) and
one place to read what the loop needs from each part.

This module sits at the bottom of the package's layers: it imports the data types it mentions
only for type checking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rlrt_megatron.cluster.pool import EnginePoolConfig, SyncStats
    from rlrt_megatron.megatron.scoring import ScoreResult
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig
    from rlrt_megatron.rewards.pool import RewardBatch
    from rlrt_megatron.rollout.sampling import Sample, SamplingConfig
    from rlrt_megatron.rollout.weights import WeightManifest


class RankGroup(Protocol):
    """Processes that run a function together (one Megatron world)."""

    def run_all(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(actor, *args)`` on every rank; the results in rank order."""
        ...


class Policy(RankGroup, Protocol):
    """The trained model: scores rollouts and updates on them."""

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        *,
        teacher_prompts: Sequence[Sequence[int] | None] | None = None,
        teacher_entropy: bool = False,
    ) -> ScoreResult:
        """Per-token student (and teacher-view) log-probs of ``responses``, forward only."""
        ...

    def train_step(self, batch: TrainBatch, update: UpdateConfig) -> list[dict[str, float]]:
        """One RL update (its mini-batches); one metrics dict per mini-batch."""
        ...


class PendingRollouts(Protocol):
    """A generation dispatched to the engines, not waited for yet."""

    def result(self) -> list[list[Sample]]:
        """Wait; ``n`` samples per prompt, in prompt order."""
        ...


class RolloutEngines(Protocol):
    """The rollout engines: generate with the weights they hold (``version``)."""

    version: int

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig
    ) -> list[list[Sample]]: ...

    def submit(self, prompts: list[list[int]], sampling: SamplingConfig) -> PendingRollouts: ...


class WeightSyncTarget(RolloutEngines, Protocol):
    """What a weight transport needs from the engine pool (`cluster.sync`)."""

    config: EnginePoolConfig
    platform: str

    @property
    def manifest(self) -> WeightManifest:
        """The engines' checkpoint layout: every HF name and shape they expect."""
        ...

    def engine(self, index: int) -> Any:
        """Engine ``index``'s actor handle."""
        ...

    def load_packed_weights(self, packed: Any, *, version: int | None = None) -> SyncStats: ...

    def load_direct_weights(
        self,
        deliver: Callable[[list[int]], tuple[int, int, int]],
        *,
        version: int | None = None,
        indices: list[int] | None = None,
    ) -> SyncStats: ...


class Grader(Protocol):
    """Scores responses against ground truths (rewards in [0, 1])."""

    def grade(self, responses: Sequence[str], ground_truths: Sequence[str]) -> RewardBatch: ...


class Placement(Protocol):
    """The policy and the engines as placed on the cluster, with the weight sync between them."""

    @property
    def policy(self) -> Policy: ...

    @property
    def engines(self) -> RolloutEngines: ...

    def release_engine_memory(self) -> None:
        """Colocated placement: put the engines to sleep until the next sync (else nothing)."""
        ...

    def sync_weights(
        self, *, version: int | None = None, bucket_bytes: int | None = None
    ) -> SyncStats:
        """The policy's current weights into every engine; they then report ``version``."""
        ...
