"""``rollout.backend=in_rank`` through the real stack (Ray, two Megatron ranks over gloo, no vLLM
engine): RL steps whose rollouts the ranks generate, the engine log-probs equal to the update's
own π_old (the same weights, so the truncated importance correction is exactly 1), weight
versions advancing without a sync, evaluation on the same path; and the config refusals."""

from __future__ import annotations

import math

import pytest
import torch
from _trainer_test_graders import parity_grade

from rlrt_megatron.data.synthetic import write_arithmetic_splits
from rlrt_megatron.rewards.pool import RewardPool
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.evaluation import evaluate_per_prompt
from rlrt_megatron.trainer.loop import _Run, rl_step
from rlrt_megatron.trainer.prompts import load_prompts, load_tokenizer, prompt_batches
from rlrt_megatron.trainer.stack import build_placement, cpu_threads, evaluation_sampling

G, K = 2, 4


def _overrides(tiny_qwen3_dir, train_file, run_dir):
    return [
        f"model.path={tiny_qwen3_dir}",
        f"data.train_files=[{train_file}]",
        f"data.prompts_per_step={G}",
        f"data.rollouts_per_prompt={K}",
        "data.max_prompt_tokens=128",
        "trainer.steps=3",
        f"trainer.run_dir={run_dir}",
        "trainer.console=false",
        "algorithm.method=rlrt",
        "actor.dtype=float32",
        "actor.data_parallel=2",
        # Tiny Ray shares: the session's engine pools (tests/cluster) may still hold their CPUs.
        "actor.cpus_per_rank=0.02",
        "actor.optimizer.lr=1e-3",
        "actor.optimizer.warmup_steps=0",
        "rollout.backend=in_rank",
        "rollout.max_response_tokens=24",
        "eval.max_response_tokens=24",
        "eval.n=2",
        "ray.num_cpus=2",
    ]


@pytest.mark.distributed
@pytest.mark.slow
def test_steps_and_evaluation_with_the_ranks_generating(tiny_qwen3_dir, tmp_path):
    from rlrt_megatron.cluster.in_rank_engines import InRankPlacement
    from rlrt_megatron.cluster.ray_cluster import RayConfig, init_ray

    train_file, test_file = write_arithmetic_splits(
        tmp_path, num_train=16, num_test=4, seed=0, levels=(1,)
    )
    config = load_run_config(None, _overrides(tiny_qwen3_dir, train_file, tmp_path / "run"))
    assert cpu_threads(config)[0] == 1  # two ranks share the two cores; no engine beside them
    init_ray(RayConfig(num_cpus=2))
    tokenizer = load_tokenizer(tiny_qwen3_dir)
    prompts, _ = load_prompts([str(train_file)], tokenizer, max_prompt_tokens=128)
    eval_prompts, _ = load_prompts([str(test_file)], tokenizer, max_prompt_tokens=128)
    batches = prompt_batches(prompts, G, seed=0)
    generator = torch.Generator().manual_seed(0)
    with (
        RewardPool(parity_grade, num_workers=1) as rewards,
        build_placement(config) as placement,
    ):
        assert isinstance(placement, InRankPlacement)
        run = _Run(placement, rewards, tokenizer)
        for step in range(2):
            m = rl_step(config, step, run, next(batches), generator)
            assert 0.0 <= m["reward/mean"] <= 1.0
            assert math.isfinite(m["update/loss"])
            assert m["rollout/weight_version"] == step and m["sync/version"] == step + 1
            assert m["rollout/staleness"] == 0.0 and m["sync/seconds"] < 1.0
            # The ranks sampled with the weights the update starts from: μ = π_old.
            assert m["update/rollout_is_logprob_diff_max"] < 1e-4
            assert m["update/rollout_is_clipped_frac"] == 0.0
        metrics, per_prompt = evaluate_per_prompt(
            run.engines, rewards, eval_prompts, evaluation_sampling(config)
        )
        assert len(per_prompt) == len(eval_prompts)
        assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k.endswith("accuracy"))


def test_one_step_off_refuses_in_rank_generation(tiny_qwen3_dir, tmp_path):
    overrides = _overrides(tiny_qwen3_dir, tmp_path / "train.jsonl", tmp_path / "run")
    with pytest.raises(ValueError, match="rollout.backend=in_rank generates inside the trainer"):
        load_run_config(
            None, [*overrides, "rollout.mode=one_step_off", "rollout.placement=disaggregated"]
        )


def test_unknown_backend_is_refused(tiny_qwen3_dir, tmp_path):
    overrides = _overrides(tiny_qwen3_dir, tmp_path / "train.jsonl", tmp_path / "run")
    with pytest.raises(ValueError, match="rollout.backend"):
        load_run_config(None, [*overrides, "rollout.backend=sglang"])
