"""``rollout.mode: one_step_off`` on fakes of the engines, rewards and ranks: what overlaps what,
which weights each step's rollouts come from, and that a checkpoint taken mid-run resumes to
the very same rollouts. The real stack (vLLM, Megatron, Ray) runs it end to end in
tests/trainer/test_train_resume.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _loop_fakes import FakeRewards, FakeTokenizer, templated_prompts

from rlrt_megatron.configuration import ConfigError
from rlrt_megatron.megatron.safe_state import load_state, save_state
from rlrt_megatron.megatron.scoring import ScoreResult
from rlrt_megatron.rollout.sampling import Sample
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.loop import _Run, rl_step
from rlrt_megatron.trainer.prompts import prompt_batches
from rlrt_megatron.trainer.rollout_feed import (
    RolloutFeed,
    decode_samples,
    encode_samples,
    step_sampling,
)

G, K, STEPS = 2, 4, 4


class Events(list):
    """The order in which the fakes were called."""


class FakePending:
    def __init__(self, events, samples, step_seed):
        self.events, self.samples, self.seed = events, samples, step_seed

    def result(self):
        self.events.append(("collect", self.seed))
        return self.samples


class FakeEngines:
    """Samples depend on the prompt, the seed and the weight version they were made with; a
    sample is correct for k < 2 so every group has both outcomes."""

    def __init__(self, events):
        self.events, self.version = events, 0

    def _samples(self, prompts, sampling):
        out = []
        for g, ids in enumerate(prompts):
            group = []
            for k in range(sampling.n):
                n = 2 + (sum(ids) + k + sampling.seed) % 3
                answer = "2" if k < 2 else "5"
                group.append(
                    Sample(
                        token_ids=[3 + k + g] * n,
                        logprobs=[-0.5 - 0.01 * k - 1e-9 * sampling.seed] * n,
                        finish_reason="stop" if k % 2 else "length",
                        text=f"v{self.version} so \\boxed{{{answer}}}",
                        weight_version=self.version,
                    )
                )
            out.append(group)
        return out

    def generate(self, prompts, sampling):
        self.events.append(("generate", sampling.seed))
        return self._samples(prompts, sampling)

    def submit(self, prompts, sampling):
        self.events.append(("submit", sampling.seed))
        # The engine generates with the weights it holds at dispatch (a sync waits for it).
        return FakePending(self.events, self._samples(prompts, sampling), sampling.seed)


class FakePolicy:
    def __init__(self, events):
        self.events, self.batches, self.scored_rows = events, [], []

    def score(self, prompts, responses, *, teacher_prompts=None, teacher_entropy=False):
        self.events.append(("score", len(responses)))
        self.scored_rows.append(len(responses))
        b, t = len(responses), max(len(r) for r in responses)
        lengths = torch.tensor([len(r) for r in responses])
        mask = torch.arange(t)[None] < lengths[:, None]
        student = torch.where(mask, -0.4, 0.0)
        teacher = None if teacher_prompts is None else torch.where(mask, -0.7, 0.0)
        has_teacher = torch.tensor(
            [teacher_prompts is not None and p is not None for p in teacher_prompts or [None] * b]
        )
        return ScoreResult(
            response_mask=mask,
            student_log_prob=student,
            student_entropy=torch.where(mask, 1.5, 0.0),
            has_teacher=has_teacher,
            teacher_log_prob=teacher,
            kl=None if teacher is None else torch.where(mask, 0.1, 0.0),
            teacher_entropy=None,
        )

    def train_step(self, batch, update):
        self.events.append(("update", None))
        self.batches.append(batch)
        return [{"loss": 0.0, "rollout_is_weight_mean": 1.0}]


class FakePlacement:
    def __init__(self, events):
        self.events = events
        self.engines, self.policy = FakeEngines(events), FakePolicy(events)

    def release_engine_memory(self):
        pass

    def sync_weights(self):
        self.events.append(("sync", None))
        self.engines.version += 1
        return SimpleNamespace(seconds=0.0, version=self.engines.version)


def _config(tmp_path, mode, method="grpo", extra=()):
    return load_run_config(
        None,
        [
            "model.path=unused",
            "data.train_files=[unused.jsonl]",
            f"data.prompts_per_step={G}",
            f"data.rollouts_per_prompt={K}",
            f"trainer.steps={STEPS}",
            f"trainer.run_dir={tmp_path}",
            f"algorithm.method={method}",
            "actor.mini_batches=1",
            f"rollout.mode={mode}",
            *extra,
        ],
    )


def _prompts(n=6):
    return templated_prompts(n)


def _run_steps(tmp_path, mode, method="grpo", steps=range(STEPS), feed=None, placement=None):
    config = _config(tmp_path, mode, method)
    events = Events()
    placement = placement or FakePlacement(events)
    run = _Run(placement, FakeRewards(), FakeTokenizer())
    feed = feed or RolloutFeed(config, placement.engines, prompt_batches(_prompts(), G, seed=3))
    metrics = [rl_step(config, s, run, feed, torch.Generator().manual_seed(0)) for s in steps]
    return metrics, placement, feed


def test_colocated_placement_is_refused_at_config_load(tmp_path):
    with pytest.raises(ConfigError, match="one_step_off needs rollout.placement=disaggregated"):
        _config(tmp_path, "one_step_off", extra=["rollout.placement=colocated"])


def test_sync_mode_generates_each_step_on_policy(tmp_path):
    metrics, placement, _ = _run_steps(tmp_path, "sync")
    kinds = [e[0] for e in placement.events]
    assert kinds == ["generate", "update", "sync"] * STEPS  # grpo + shortcut: no scoring pass
    assert [m["rollout/staleness"] for m in metrics] == [0.0] * STEPS
    assert [m["rollout/weight_version"] for m in metrics] == [0.0, 1.0, 2.0, 3.0]


def test_one_step_off_overlaps_the_next_generation_with_the_update(tmp_path):
    metrics, placement, _ = _run_steps(tmp_path, "one_step_off")
    events = placement.events
    # Step 0 generates its own batch; from then on step t+1's generation is dispatched before
    # step t's scoring and update, and collected before step t's sync.
    seeds = [step_sampling(_config(tmp_path, "sync"), s, G).seed for s in range(STEPS)]
    assert events[0] == ("generate", seeds[0])
    for step in range(STEPS - 1):
        submit = events.index(("submit", seeds[step + 1]))
        collect = events.index(("collect", seeds[step + 1]))
        updates = [i for i, e in enumerate(events) if e[0] == "update"]
        syncs = [i for i, e in enumerate(events) if e[0] == "sync"]
        assert submit < updates[step] < collect < syncs[step]
    assert ("submit", step_sampling(_config(tmp_path, "sync"), STEPS, G).seed) not in events
    # Each batch was made with the weights of the step before: one version stale (not step 0).
    assert [m["rollout/weight_version"] for m in metrics] == [0.0, 0.0, 1.0, 2.0]
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 1.0, 1.0, 1.0]
    # π_old comes from a scoring pass of every row (no on-policy shortcut), and the engines'
    # log-probs go to the truncated importance correction.
    assert placement.policy.scored_rows == [G * K] * STEPS
    for batch in placement.policy.batches:
        assert batch.old_logprobs is not None and batch.rollout_logprobs is not None
    assert all(m["update/on_policy_shortcut"] == 0.0 for m in metrics)
    assert all("time/rollout_wait" in m for m in metrics)


def test_one_step_off_draws_the_same_prompts_and_seeds_as_sync(tmp_path):
    _, sync_placement, _ = _run_steps(tmp_path / "a", "sync")
    _, off_placement, _ = _run_steps(tmp_path / "b", "one_step_off")
    sync_batches, off_batches = sync_placement.policy.batches, off_placement.policy.batches
    for a, b in zip(sync_batches, off_batches, strict=True):
        assert a.prompts == b.prompts and a.responses == b.responses


def test_checkpoint_mid_run_resumes_to_the_same_rollouts(tmp_path):
    straight, _, _ = _run_steps(tmp_path / "straight", "one_step_off")

    # Stop after step 1 (its batch for step 2 is already generated), checkpoint through the
    # JSON-safe state files, and resume in a fresh feed and fake engines at version 2.
    first, placement, feed = _run_steps(tmp_path / "first", "one_step_off", steps=range(2))
    state = feed.state_dict()
    assert state["rollouts_ahead"] is not None
    save_state(state, tmp_path / "extra.json")
    restored = load_state(tmp_path / "extra.json")

    config = _config(tmp_path / "resumed", "one_step_off")
    fresh = FakePlacement(Events())
    fresh.engines.version = placement.engines.version
    resumed_feed = RolloutFeed(config, fresh.engines, prompt_batches(_prompts(), G, seed=3))
    resumed_feed.load_state_dict(restored["data"], restored["rollouts_ahead"])
    rest, _, _ = _run_steps(
        tmp_path / "resumed",
        "one_step_off",
        steps=range(2, STEPS),
        feed=resumed_feed,
        placement=fresh,
    )
    assert fresh.events[0][0] == "submit"  # step 2 trains on the saved batch, generates step 3
    for a, b in zip(straight, first + rest, strict=True):
        for key in (
            "reward/mean",
            "rollout/weight_version",
            "rollout/staleness",
            "response/length_mean",
            "reward/accuracy",
        ):
            assert a[key] == b[key], key


def test_a_checkpoint_without_rollouts_ahead_generates_them(tmp_path):
    config = _config(tmp_path, "one_step_off")
    feed = RolloutFeed(config, FakeEngines(Events()), prompt_batches(_prompts(), G, seed=3))
    position = feed.state_dict()
    assert position["rollouts_ahead"] is None  # nothing generated yet
    feed.load_state_dict(position["data"], None)
    batch = feed.take(0)
    assert len(batch.samples) == G and feed._engines.events == [("generate", batch_seed(config))]


def batch_seed(config):
    return step_sampling(config, 0, G).seed


def test_rollouts_ahead_must_match_the_batch_shape(tmp_path):
    config = _config(tmp_path, "one_step_off")
    feed = RolloutFeed(config, FakeEngines(Events()), prompt_batches(_prompts(), G, seed=3))
    feed.take(0)
    feed.start_ahead(0)
    state = feed.state_dict()
    state["rollouts_ahead"]["group_sizes"] = [K - 1, 1] + [K] * (G - 1)
    other = RolloutFeed(config, FakeEngines(Events()), prompt_batches(_prompts(), G, seed=3))
    with pytest.raises(ValueError, match="groups of"):
        other.load_state_dict(state["data"], state["rollouts_ahead"])


def test_samples_round_trip_through_the_safe_state(tmp_path):
    samples = FakeEngines(Events())._samples([[1, 2], [5]], SimpleNamespace(n=3, seed=11))
    samples[1][2] = Sample(
        token_ids=[], logprobs=[], finish_reason="abort", text="", weight_version=7
    )
    save_state({"s": encode_samples(samples)}, tmp_path / "s.json")
    assert decode_samples(load_state(tmp_path / "s.json")["s"]) == samples
