"""The on-policy shortcut in the RL loop (`rl_step`), on fakes of the engines, rewards and ranks:
which rows the scoring pass runs on, and whether the update gets old log-probs.

The numerical side (the update with ``old_logprobs=None`` equals the one with the scoring pass's
old log-probs) is tests/megatron/test_on_policy_update.py.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from _loop_fakes import FakeRewards, FakeTokenizer, templated_prompts

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.megatron.scoring import ScoreResult
from rlrt_megatron.rollout.sampling import Sample
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.loop import _Run, rl_step
from rlrt_megatron.trainer.step_batch import (
    expand_rows,
    on_policy_shortcut,
    score_for_update,
)

G, K = 2, 4
FORWARD, TEACHER_VIEW = -0.2, -0.5  # the fake actor's log P_S (its forward) and log P_T


class FakeEngines:
    """K samples per prompt; sample k of a group is correct for k < 2 (so both outcomes)."""

    def generate(self, prompts, sampling):
        out = []
        for g, _ in enumerate(prompts):
            group = []
            for k in range(sampling.n):
                n = 2 + (g + k) % 3
                answer = "2" if k < 2 else "5"
                group.append(
                    Sample(
                        token_ids=[3 + k] * n,
                        logprobs=[-0.5] * n,
                        finish_reason="stop",
                        text=f"so \\boxed{{{answer}}}",
                        weight_version=0,
                    )
                )
            out.append(group)
        return out


class FakePolicy:
    """Records the scoring calls and the update's batch; scores are deterministic per row."""

    def __init__(self):
        self.score_calls = []
        self.score_prompts = []
        self.batches = []

    def score(self, prompts, responses, *, teacher_prompts=None, teacher_entropy=False):
        self.score_calls.append([list(r) for r in responses])
        self.score_prompts.append(([list(p) for p in prompts], teacher_prompts))
        b, t = len(responses), max(len(r) for r in responses)
        lengths = torch.tensor([len(r) for r in responses])
        mask = torch.arange(t)[None] < lengths[:, None]
        student = torch.where(mask, -0.4 - 0.01 * torch.arange(b)[:, None].float(), 0.0)
        has_teacher = torch.tensor(
            [teacher_prompts is not None and p is not None for p in teacher_prompts or [None] * b]
        )
        teacher = None if teacher_prompts is None else torch.where(mask, student - 0.3, 0.0)
        return ScoreResult(
            response_mask=mask,
            student_log_prob=student,
            student_entropy=torch.where(mask, 1.5, 0.0),
            has_teacher=has_teacher,
            teacher_log_prob=teacher,
            kl=None if teacher is None else torch.where(mask, 0.1, 0.0),
            teacher_entropy=None if teacher is None or not teacher_entropy else student * 0,
        )

    def train_step(self, batch, update):
        self.batches.append((batch, update))
        metrics = {
            "loss": 0.0,
            "entropy": 1.25,
            "rollout_is_logprob_diff_mean": 0.125,
            "rollout_is_logprob_diff_max": 0.5,
        }
        if batch.reweighting is not None:  # as the actor does: score log P_T, A_t per forward
            mask = batch.response_mask
            teacher = torch.where(mask, TEACHER_VIEW, 0.0)
            reweighting = dataclasses.replace(batch.reweighting, teacher_logprobs=teacher)
            rows = torch.arange(len(batch.responses))
            forward = torch.where(mask, FORWARD, 0.0)
            _, sums = reweighting.apply(update.method, rows, forward, mask)
            metrics.update({f"reweight_{k}": v for k, v in sums.items()})
        return [metrics]


class FakePlacement:
    def __init__(self):
        self.policy, self.engines = FakePolicy(), FakeEngines()

    def release_engine_memory(self):
        pass

    def sync_weights(self):
        return SimpleNamespace(seconds=0.0, version=1)


def _config(tmp_path, method, mini_batches, teacher_weights="behavior", extra=()):
    return load_run_config(
        None,
        [
            "model.path=unused",
            "data.train_files=[unused.jsonl]",
            f"data.prompts_per_step={G}",
            f"data.rollouts_per_prompt={K}",
            "trainer.steps=1",
            f"trainer.run_dir={tmp_path}",
            f"algorithm.method={method}",
            f"actor.mini_batches={mini_batches}",
            f"actor.teacher_weights={teacher_weights}",
            *extra,
        ],
    )


def _step(tmp_path, method, mini_batches, teacher_weights="behavior", extra=()):
    config = _config(tmp_path, method, mini_batches, teacher_weights, extra)
    placement = FakePlacement()
    run = _Run(placement, FakeRewards(), FakeTokenizer())
    prompts = templated_prompts(G)
    metrics = rl_step(config, 0, run, prompts, torch.Generator().manual_seed(0))
    return metrics, placement.policy


def test_grpo_one_minibatch_skips_the_scoring_pass(tmp_path):
    metrics, policy = _step(tmp_path, "grpo", mini_batches=1)
    assert policy.score_calls == []
    ((batch, update),) = policy.batches
    assert batch.old_logprobs is None and update.mini_batches == 1
    assert metrics["update/on_policy_shortcut"] == 1.0
    # Agreement and entropy come from the update's own forward (π_θ = π_old there).
    assert metrics["rollout/logprob_diff_mean"] == 0.125
    assert metrics["rollout/logprob_diff_max"] == 0.5
    assert metrics["policy/entropy"] == 1.25


@pytest.mark.parametrize("method", ["rlrt", "rlsd"])
def test_reweighting_methods_leave_the_teacher_view_to_the_update(tmp_path, method):
    """RLRT/RLSD under the shortcut: no scoring pass at all. The update gets the plain A and a
    `DeferredReweighting` without teacher log-probs: the actor scores the teacher views in the
    update call and Eq. 6's log P_S is its own forward's."""
    metrics, policy = _step(tmp_path, method, mini_batches=1)
    ((batch, _),) = policy.batches
    assert policy.score_calls == []
    assert batch.old_logprobs is None
    teacher_rows = [i for i, t in enumerate(batch.teacher_prompts) if t is not None]
    assert 0 < len(teacher_rows)
    if method == "rlrt":
        assert len(teacher_rows) < G * K  # RLRT gives a teacher to correct rows only
    reweighting = batch.reweighting
    assert reweighting is not None and reweighting.teacher_logprobs is None
    assert reweighting.has_teacher.nonzero().flatten().tolist() == teacher_rows
    mask = batch.response_mask
    plain = torch.where(mask, reweighting.advantages[:, None].expand(mask.shape), 0.0)
    torch.testing.assert_close(batch.token_advantages, plain)
    # No student row scored: agreement and entropy from the update's forward, no teacher KL.
    assert metrics["rollout/logprob_diff_mean"] == 0.125
    assert metrics["policy/entropy"] == 1.25
    assert "teacher/kl_mean" not in metrics
    assert not any(k.startswith("update/reweight_") for k in metrics)
    assert metrics["reweight/reweighted_tokens"] > 0  # the update's sums became the stats
    correct = reweighting.correct & reweighting.has_teacher
    if correct.any():  # D_t = log P_S - log P_T on the correct teacher rows
        assert metrics["reweight/mean_log_ratio_correct"] == pytest.approx(FORWARD - TEACHER_VIEW)


def test_log_teacher_kl_scores_both_views_of_the_teacher_rows(tmp_path):
    metrics, policy = _step(tmp_path, "rlrt", 1, extra=["trainer.log_teacher_kl=true"])
    ((batch, _),) = policy.batches
    assert batch.old_logprobs is None and batch.reweighting is None
    teacher_rows = [i for i, t in enumerate(batch.teacher_prompts) if t is not None]
    (scored,) = policy.score_calls
    assert scored == [list(batch.responses[i]) for i in teacher_rows]
    ((_, teacher_prompts),) = policy.score_prompts
    assert teacher_prompts == [batch.teacher_prompts[i] for i in teacher_rows]
    assert metrics["rollout/logprob_diff_tokens"] == sum(
        len(batch.responses[i]) for i in teacher_rows
    )
    assert metrics["teacher/kl_mean"] == pytest.approx(0.1)
    assert metrics["reweight/reweighted_tokens"] > 0  # D_t from the scored rows reached A_t


@pytest.mark.parametrize(
    ("method", "mini_batches", "teacher_weights"),
    [
        ("grpo", 2, "behavior"),
        ("rlrt", 2, "behavior"),
        ("rlrt", 1, "ema"),
        ("grpo_eb", 1, "behavior"),
    ],
)
def test_full_scoring_pass_where_old_logprobs_differ(
    tmp_path, method, mini_batches, teacher_weights
):
    metrics, policy = _step(tmp_path, method, mini_batches, teacher_weights)
    (scored,) = policy.score_calls
    ((batch, _),) = policy.batches
    assert len(scored) == G * K
    assert batch.old_logprobs is not None
    assert metrics["update/on_policy_shortcut"] == 0.0


def test_on_policy_shortcut_conditions():
    def allowed(method, mini_batches=1, teacher_weights="behavior", **kw):
        return on_policy_shortcut(
            AlgorithmConfig(method=method, **kw),
            mini_batches=mini_batches,
            teacher_weights=teacher_weights,
        )

    assert allowed("grpo") and allowed("rlrt") and allowed("sdpo")
    assert not allowed("grpo", mini_batches=2)
    for mode in ("current", "initial", "ema"):
        assert not allowed("rlrt", teacher_weights=mode)
    assert not allowed("grpo_eb")  # advantage-form entropy term: every row's entropy first
    assert allowed("grpo_eb", entropy_form="loss")


def test_expand_rows_places_the_scored_rows():
    policy = FakePolicy()
    responses = [[1, 2], [3], [4, 5, 6]]
    teachers = [None, [7, 8], None]
    scores, scored = score_for_update(
        policy, [[0]] * 3, responses, teachers, shortcut=True, teacher_entropy=False
    )
    assert scored.tolist() == [False, True, False]
    assert scores.student_log_prob.shape == (3, 3)
    assert scores.student_log_prob[1].tolist() == pytest.approx([-0.4, 0.0, 0.0])
    assert scores.teacher_log_prob[1, 0].item() == pytest.approx(-0.7)
    assert scores.student_log_prob[[0, 2]].abs().sum() == 0
    assert scores.has_teacher.tolist() == [False, True, False]
    part = policy.score([[0]], [[9, 9]], teacher_prompts=[[1]])
    full = expand_rows(part, [2], scores)
    assert full.student_log_prob[2].tolist() == pytest.approx([-0.4, -0.4, 0.0])
    assert full.student_log_prob[1].tolist() == pytest.approx([-0.4, 0.0, 0.0])  # kept
