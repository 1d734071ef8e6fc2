"""Turning one step's samples into the actor's inputs (driver side, no model).

samples (G prompts × K) + rewards → group advantages → teacher plan → (after scoring) token
advantages → `TrainBatch`. Every function here is plain tensor/list work, tested without engines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from rlrt_megatron.algorithms.advantages import group_advantages
from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.algorithms.diversity import diversity_shaped_rewards, group_diversity
from rlrt_megatron.algorithms.entropy_advantage import entropy_shaped_advantages
from rlrt_megatron.algorithms.registry import distillation_rows, policy_gradient_rows
from rlrt_megatron.algorithms.reweighting import (
    REWEIGHT_SUM_KEYS,
    DeferredReweighting,
    token_advantages,
    token_weight_stats,
    weight_stats_from_sums,
)
from rlrt_megatron.data.records import PromptRecord
from rlrt_megatron.megatron.scoring import ScoreResult
from rlrt_megatron.rollout.sampling import Sample
from rlrt_megatron.teacher.contexts import GroupInputs, TeacherPlan, plan_teacher_batch


@dataclass
class StepRollouts:
    """A step's rollouts, flattened group-major: row b = group b // K, sample b % K."""

    records: list[PromptRecord]
    prompt_ids: list[list[int]]
    """Per group: the student's templated prompt ids."""
    samples: list[list[Sample]]
    """Per group: K samples."""

    @property
    def num_groups(self) -> int:
        return len(self.records)

    @property
    def group_size(self) -> int:
        return len(self.samples[0]) if self.samples else 0

    def select(self, groups: Sequence[int]) -> StepRollouts:
        """The rollouts of the given groups only (e.g. after dynamic sampling), in that order."""
        return StepRollouts(
            records=[self.records[g] for g in groups],
            prompt_ids=[self.prompt_ids[g] for g in groups],
            samples=[self.samples[g] for g in groups],
        )

    def flat_samples(self) -> list[Sample]:
        return [s for group in self.samples for s in group]

    def flat_prompts(self) -> list[list[int]]:
        k = self.group_size
        return [ids for ids in self.prompt_ids for _ in range(k)]

    def padded(self, values: Callable[[Sample], Sequence[float]]) -> torch.Tensor:
        """[B, T] float32 of a per-token sample attribute, zero past each response's end."""
        flat = self.flat_samples()
        t = max(len(s.token_ids) for s in flat)
        out = torch.zeros(len(flat), t)
        for b, sample in enumerate(flat):
            v = values(sample)
            out[b, : len(v)] = torch.tensor(v, dtype=torch.float32)
        return out


def shaped_advantages(
    config: AlgorithmConfig, rollouts: StepRollouts, rewards: torch.Tensor
) -> torch.Tensor:
    """[G, K] group advantages of the method (DIVER's diversity bonus added before them)."""
    if config.spec.reward_shaping == "diversity":
        defaults = config.spec.defaults
        diversity = torch.tensor(
            [
                group_diversity([s.text for s in group], defaults.diversity_metric)
                for group in rollouts.samples
            ]
        )
        rewards = diversity_shaped_rewards(
            rewards, diversity, defaults.diversity_coef, defaults.diversity_clip
        )
    return group_advantages(rewards, config.use_std, config.adv_eps)


def plan_teachers(
    config: AlgorithmConfig,
    rollouts: StepRollouts,
    correct: torch.Tensor,
    advantages: torch.Tensor,
    lam: float,
    generator: torch.Generator,
) -> TeacherPlan:
    groups = [
        GroupInputs(
            messages=record.prompt,
            responses=[s.text for s in samples],
            ground_truth=record.ground_truth,
            solution=record.solution,
        )
        for record, samples in zip(rollouts.records, rollouts.samples, strict=True)
    ]
    return plan_teacher_batch(config.spec, groups, correct, advantages, lam, generator)


@dataclass
class TokenAdvantages:
    values: torch.Tensor
    """[B, T] A_t (0 past each response)."""
    pg_rows: torch.Tensor
    distill_rows: torch.Tensor
    metrics: dict[str, float]


def compute_token_advantages(
    config: AlgorithmConfig,
    *,
    advantages: torch.Tensor,
    correct: torch.Tensor,
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor | None,
    response_mask: torch.Tensor,
    has_teacher: torch.Tensor,
    lam: float,
    student_entropy: torch.Tensor | None = None,
) -> TokenAdvantages:
    """The method's per-token advantages and loss routing for a step (all [B] / [B, T]).

    GRPO+EB's advantage-form entropy term (Cheng et al., `entropy_shaped_advantages`) is added
    here from ``student_entropy`` [B, T], the scoring pass's per-token entropy (required then).
    SRPO's entropy weights are not computed here: the update step derives them per mini-batch
    from the teacher entropy it is given.
    """
    spec = config.spec
    teacher = student_logprobs if teacher_logprobs is None else teacher_logprobs
    values = token_advantages(
        spec,
        advantages,
        correct,
        student_logprobs,
        teacher,
        response_mask,
        has_teacher,
        lam=lam,
        eps_w=config.weight_clip,
    )
    metrics = token_weight_stats(
        spec,
        advantages,
        correct,
        student_logprobs,
        teacher,
        response_mask,
        has_teacher,
        eps_w=config.weight_clip,
    )
    if config.entropy_advantage is not None:
        if student_entropy is None:
            raise ValueError(f"method {spec.name!r} needs the per-token student_entropy")
        alpha, kappa = config.entropy_advantage
        values, shaping = entropy_shaped_advantages(
            values, student_entropy, response_mask, alpha=alpha, kappa=kappa
        )
        metrics.update({f"entropy_advantage/{k}": v for k, v in shaping.items()})
    pg = policy_gradient_rows(spec, correct, has_teacher)
    distill = distillation_rows(spec, correct, has_teacher)
    return TokenAdvantages(values=values, pg_rows=pg, distill_rows=distill, metrics=metrics)


def deferred_token_advantages(
    config: AlgorithmConfig,
    *,
    advantages: torch.Tensor,
    correct: torch.Tensor,
    response_mask: torch.Tensor,
    has_teacher: torch.Tensor,
    lam: float,
) -> tuple[TokenAdvantages, DeferredReweighting]:
    """`compute_token_advantages` with Eq. 6–7's weights left to the update (on-policy
    shortcut; shapes as there): ``values`` is the plain A on every response token and the
    `DeferredReweighting` carries what the actor needs to weight it, scoring the teacher views
    itself (log P_T) and taking log P_S from its own forward. ``metrics`` is empty: the update
    returns the weights' sums (`reweight_metrics` turns them into the same stats)."""
    spec = config.spec
    mask = response_mask.bool()
    plain = torch.where(mask, advantages.unsqueeze(-1).expand(mask.shape), 0.0)
    reweighting = DeferredReweighting(
        advantages=advantages,
        correct=correct,
        has_teacher=has_teacher,
        teacher_logprobs=None,
        lam=lam,
        eps_w=config.weight_clip,
    )
    values = TokenAdvantages(
        values=plain,
        pg_rows=policy_gradient_rows(spec, correct, has_teacher),
        distill_rows=distillation_rows(spec, correct, has_teacher),
        metrics={},
    )
    return values, reweighting


def reweight_metrics(
    update_metrics: list[dict[str, float]], response_mask: torch.Tensor
) -> dict[str, float]:
    """The `token_weight_stats` of a batch reweighted in the update (`DeferredReweighting`),
    from the ``reweight_*`` sums its (single) mini-batch returned; those keys are removed from
    ``update_metrics`` (they are not update metrics of their own)."""
    sums = {}
    for metrics in update_metrics:
        for key in REWEIGHT_SUM_KEYS:
            sums[key] = sums.get(key, 0.0) + metrics.pop(f"reweight_{key}", 0.0)
    return weight_stats_from_sums(sums, float(response_mask.bool().sum()))


def keep_informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[G] bool: groups whose rewards are not all equal (DAPO's dynamic sampling filter)."""
    return (rewards != rewards[:, :1]).any(dim=-1)


def on_policy_shortcut(
    config: AlgorithmConfig, *, mini_batches: int, teacher_weights: str, rollout_mode: str = "sync"
) -> bool:
    """True when the update needs no student scoring pass: its old log-probs are its own.

    With one mini-batch the update runs on the weights that sampled the rollouts (the engines are
    synced after every update), so π_old = π_θ and the loss can take its own forward's log-probs,
    detached (`TrainBatch.old_logprobs` None). Conditions:
    - ``rollout_mode == "sync"``: with one_step_off the rollouts come from the previous weights,
      so π_old (the weights the update starts from) needs its own pass.
    - ``mini_batches == 1``: after the first optimizer step π_θ moves away from π_old.
    - ``teacher_weights == "behavior"``: the teacher view shares the student's weights and
      micro-batches, so only its rows need a pass; the other options (initial, ema, current)
      keep the full scoring pass.
    - no GRPO+EB advantage-form entropy term: it needs every row's entropy before the update.
    """
    return (
        rollout_mode == "sync"
        and mini_batches == 1
        and teacher_weights == "behavior"
        and config.entropy_advantage is None
    )


def score_for_update(
    policy: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    teacher_prompts: Sequence[Sequence[int] | None],
    *,
    shortcut: bool,
    teacher_entropy: bool,
) -> tuple[ScoreResult, torch.Tensor]:
    """The scoring pass of a step: ``(scores, scored)``, scores [B, T] in the batch's order and
    ``scored`` [B] bool, the rows the pass ran on.

    Without the shortcut every row is scored (student view; teacher view where a teacher prompt
    is given). With it (`on_policy_shortcut`) only the rows with a teacher prompt are (their
    student log-probs enter the token weights, e.g. RLRT's D_t, Eq. 6), and nothing at all when
    no row has one (GRPO); the other rows' fields are 0.
    """
    has_teacher = [t is not None for t in teacher_prompts]
    if not shortcut:
        scores = policy.score(
            prompts,
            responses,
            teacher_prompts=teacher_prompts if any(has_teacher) else None,
            teacher_entropy=teacher_entropy,
        )
        return scores, torch.ones(len(responses), dtype=torch.bool)
    rows = [i for i, h in enumerate(has_teacher) if h]
    full, scored = unscored(responses, teacher_prompts)
    if not rows:
        return full, scored
    part = policy.score(
        [prompts[i] for i in rows],
        [responses[i] for i in rows],
        teacher_prompts=[teacher_prompts[i] for i in rows],
        teacher_entropy=teacher_entropy,
    )
    scored[rows] = True
    return expand_rows(part, rows, full), scored


def unscored(
    responses: Sequence[Sequence[int]], teacher_prompts: Sequence[Sequence[int] | None]
) -> tuple[ScoreResult, torch.Tensor]:
    """``(scores, scored)`` of a step without a scoring pass: the response mask and
    ``has_teacher``, zero student fields, no teacher fields, no row scored."""
    t = max(len(r) for r in responses)
    lengths = torch.tensor([len(r) for r in responses])
    full = ScoreResult(
        response_mask=torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1),
        student_log_prob=torch.zeros(len(responses), t),
        student_entropy=torch.zeros(len(responses), t),
        has_teacher=torch.tensor([p is not None for p in teacher_prompts], dtype=torch.bool),
    )
    return full, torch.zeros(len(responses), dtype=torch.bool)


def expand_rows(part: ScoreResult, rows: Sequence[int], full: ScoreResult) -> ScoreResult:
    """``full`` with the rows ``rows`` taken from ``part`` (the scores of those rows, in that
    order, [len(rows), T' ≤ T, ...]); fields ``full`` lacks are zero-filled to [B, T, ...]."""
    index = torch.tensor(list(rows), dtype=torch.long)
    b, t = full.response_mask.shape
    out = {}
    for f in fields(ScoreResult):
        value = getattr(part, f.name)
        if f.name in ("response_mask", "has_teacher") or value is None:
            out[f.name] = getattr(full, f.name) if value is not None else None
            continue
        base = getattr(full, f.name)
        if base is None:
            base = torch.zeros(b, t, *value.shape[2:], dtype=value.dtype)
        base = base.clone()
        base[index, : value.shape[1]] = value
        out[f.name] = base
    return ScoreResult(**out)
