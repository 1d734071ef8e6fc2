"""Shared pieces of the test_policy_*.py modules: rollouts from a pool result, the trainer/engine
agreement of a batch, and a one-step GRPO batch built from hand-made advantages."""

from __future__ import annotations

import torch

from rlrt_megatron.cluster.agreement import LogprobAgreement, logprob_agreement, padded_logprobs

LOGPROB_ATOL = 1e-4
"""Trainer/engine log-prob tolerance in float32; justified in test_policy_sync.py."""
STALE_MIN = 1e-2
"""The least disagreement one large update must cause before a sync (so the checks bite)."""


def flatten(prompts, samples):
    """A pool result as per-rollout lists: prompts, responses, engine log-probs, versions."""
    rows = ([], [], [], [])
    for prompt, group in zip(prompts, samples, strict=True):
        for s in group:
            for column, value in zip(
                rows, (prompt, s.token_ids, s.logprobs, s.weight_version), strict=True
            ):
                column.append(value)
    return rows


def agreement(policy, prompts, samples) -> tuple[LogprobAgreement, object]:
    """The policy group's scores of the pool's samples, and their agreement with the engines."""
    prompts, responses, logprobs, _ = flatten(prompts, samples)
    scores = policy.score(prompts, responses)
    engine = padded_logprobs(logprobs, scores.response_mask.shape[1])
    return logprob_agreement(engine, scores.student_log_prob, scores.response_mask), scores


def grpo_step(policy, prompts, samples, scores) -> list[dict[str, float]]:
    """One GRPO update on the pool's samples, rollouts alternately rewarded +1 / -1."""
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    prompts, responses, logprobs, _ = flatten(prompts, samples)
    mask = scores.response_mask
    advantages = torch.tensor([1.0, -1.0] * (len(responses) // 2))
    batch = TrainBatch(
        prompts=prompts,
        responses=responses,
        old_logprobs=scores.student_log_prob,
        token_advantages=advantages[:, None] * mask,
        pg_rows=torch.ones(len(responses), dtype=torch.bool),
        distill_rows=torch.zeros(len(responses), dtype=torch.bool),
        rollout_logprobs=padded_logprobs(logprobs, mask.shape[1]),
    )
    metrics = policy.train_step(batch, UpdateConfig(method="grpo"))
    for step in metrics:
        assert all(torch.isfinite(torch.tensor(v)) for v in step.values()), step
    return metrics


def policy_config(model_dir, *, tp: int = 1, pp: int = 1, cpus_per_rank: float = 0.02):
    """Two float32 Megatron ranks of the tiny Qwen3 with a large AdamW step (eps keeps Adam's
    first step from being sign(g)·lr everywhere)."""
    from rlrt_megatron.cluster.policy_group import PolicyGroupConfig
    from rlrt_megatron.megatron.actor import ActorConfig
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import ParallelConfig

    return PolicyGroupConfig(
        actor=ActorConfig(
            hf_path=str(model_dir),
            parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp),
            optimizer=AdamWConfig(lr=2e-2, eps=1e-3, weight_decay=0.0),
            dtype=torch.float32,
            max_tokens=256,
        ),
        num_ranks=2,
        cpus_per_rank=cpus_per_rank,
    )
