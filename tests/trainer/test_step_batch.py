import pytest
import torch

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.data.records import PromptRecord
from rlrt_megatron.rollout.sampling import Sample
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.step_batch import (
    StepRollouts,
    compute_token_advantages,
    keep_informative_groups,
    plan_teachers,
    shaped_advantages,
)


def sample(text, ids, logprobs):
    return Sample(
        token_ids=ids, logprobs=logprobs, finish_reason="stop", text=text, weight_version=3
    )


ROLLOUTS = StepRollouts(
    records=[
        PromptRecord(prompt=[{"role": "user", "content": "1+1?"}], ground_truth="2"),
        PromptRecord(prompt=[{"role": "user", "content": "2+2?"}], ground_truth="4"),
    ],
    prompt_ids=[[1, 2], [3, 4, 5]],
    samples=[
        [sample("$a$ \\boxed{2}", [7, 8], [-0.1, -0.2]), sample("\\boxed{3}", [9], [-0.3])],
        [
            sample("\\boxed{4}", [7], [-0.5]),
            sample("$b$ $c$ \\boxed{4}", [6, 6, 6], [-1.0, -1.0, -1.0]),
        ],
    ],
)
REWARDS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])


def test_flat_views():
    assert ROLLOUTS.flat_prompts() == [[1, 2], [1, 2], [3, 4, 5], [3, 4, 5]]
    logprobs = ROLLOUTS.padded(lambda s: s.logprobs)
    assert logprobs.shape == (4, 3) and logprobs[3].tolist() == [-1.0, -1.0, -1.0]
    assert logprobs[1].tolist() == pytest.approx([-0.3, 0.0, 0.0])


def test_advantages_and_diver_shaping():
    grpo = shaped_advantages(AlgorithmConfig(method="grpo"), ROLLOUTS, REWARDS)
    assert grpo.tolist() == [[0.5, -0.5], [0.0, 0.0]]
    diver = shaped_advantages(AlgorithmConfig(method="diver"), ROLLOUTS, REWARDS)
    # Group 1: both correct; equation diversity 0 (no formula) vs 1 → shaped 1.0 vs 1.68.
    assert diver[1, 1] > 0 > diver[1, 0]
    keep = keep_informative_groups(REWARDS)
    assert keep.tolist() == [True, False]
    kept = ROLLOUTS.select(keep.nonzero().flatten().tolist())
    assert kept.num_groups == 1 and kept.prompt_ids == [[1, 2]]
    assert [s.text for s in kept.flat_samples()] == ["$a$ \\boxed{2}", "\\boxed{3}"]


def test_teacher_plan_and_token_advantages_for_rlrt():
    config = AlgorithmConfig(method="rlrt", eps_w=0.5)
    correct = REWARDS.bool()
    adv = shaped_advantages(config, ROLLOUTS, REWARDS)
    plan = plan_teachers(config, ROLLOUTS, correct, adv, lam=0.5, generator=torch.Generator())
    # Group 0's only correct rollout has no peer; group 1's advantages are 0 → no teacher pass.
    assert not plan.rows.any()
    student = ROLLOUTS.padded(lambda s: s.logprobs)
    mask = student != 0
    out = compute_token_advantages(
        config,
        advantages=adv.flatten(),
        correct=correct.flatten(),
        student_logprobs=student,
        teacher_logprobs=student - 1.0,
        response_mask=mask,
        has_teacher=plan.rows,
        lam=0.5,
    )
    torch.testing.assert_close(out.values, adv.flatten().unsqueeze(-1) * mask)
    assert out.pg_rows.all() and not out.distill_rows.any()


def test_grpo_eb_token_advantages_carry_the_entropy_term():
    config = AlgorithmConfig(method="grpo_eb")  # α 0.4, κ 2
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    adv = shaped_advantages(config, ROLLOUTS, rewards)  # group 0: +0.5 / −0.5; group 1: 0
    student = ROLLOUTS.padded(lambda s: s.logprobs)
    mask = student != 0
    entropy = torch.tensor([[0.5, 2.0, 0.0], [0.5, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    kwargs = dict(
        advantages=adv.flatten(),
        correct=rewards.bool().flatten(),
        student_logprobs=student,
        teacher_logprobs=None,
        response_mask=mask,
        has_teacher=torch.zeros(4, dtype=torch.bool),
        lam=0.0,
    )
    out = compute_token_advantages(config, student_entropy=entropy, **kwargs)
    # Row 0 (A = 0.5): min(0.4·0.5, 0.25) = 0.2, min(0.4·2, 0.25) = 0.25.
    # Row 1 (A = −0.5): −0.5 + min(0.2, 0.25) = −0.3. Group 1 (A = 0): nothing added.
    expected = torch.tensor([[0.7, 0.75, 0.0], [-0.3, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0] * 3])
    torch.testing.assert_close(out.values, expected)
    assert out.metrics["entropy_advantage/clipped_fraction"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="needs the per-token student_entropy"):
        compute_token_advantages(config, **kwargs)
    loss_form = AlgorithmConfig(method="grpo_eb", entropy_form="loss")
    plain = compute_token_advantages(loss_form, student_entropy=entropy, **kwargs)
    torch.testing.assert_close(plain.values, adv.flatten().unsqueeze(-1) * mask)


def test_run_config_from_yaml(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "model: {path: /models/qwen3}\n"
        "data: {train_files: [train.jsonl], prompts_per_step: 4}\n"
        "trainer: {steps: 2, run_dir: runs/x}\n"
        "algorithm: {method: sdpo}\n"
        "actor: {dtype: float32, parallel: {tensor_parallel: 2}}\n"
    )
    config = load_run_config(tmp_path / "run.yaml", ["rollout.placement=colocated"])
    assert config.actor.dtype == torch.float32 and config.actor.parallel.tensor_parallel == 2
    assert config.lr == 1e-5  # SDPO's default learning rate
    assert config.rollout.placement == "colocated" and config.data.rollouts_per_prompt == 8
