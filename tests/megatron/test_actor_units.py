"""Single-process pieces of the actor: DP shares, paired micro-batches, batch validation, the
teacher-weight copy (swap in/out, EMA)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlrt_megatron.megatron.forward import dp_share, plan_microbatches
from rlrt_megatron.megatron.teacher_weights import TeacherWeights
from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig


def test_dp_share_partitions_and_balances():
    lengths = [9, 1, 4, 7, 3, 3, 8, 2]
    shares = [dp_share(lengths, 3, r) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths)
    assert dp_share(lengths, 1, 0) == list(range(len(lengths)))


def _rollouts():
    prompts = [[1, 2], [3], [4, 5, 6], [7, 8], [9]]
    responses = [[10, 11, 12], [13, 14], [15], [16, 17, 18, 19], [20, 21]]
    teachers = [[30, 31, 32, 33], None, [34, 35, 36, 37, 38], None, [39, 40]]
    return prompts, responses, teachers


def test_pairs_share_a_microbatch_within_the_budget():
    prompts, responses, teachers = _rollouts()
    mbs = plan_microbatches(range(5), prompts, responses, teachers, max_tokens=16)
    assert sorted(r for mb in mbs for r in mb.rows) == list(range(5))
    assert len(mbs) > 1
    for mb in mbs:
        ids = mb.inputs.input_ids
        assert ids.numel() <= 16
        assert len(mb.paired) == sum(teachers[r] is not None for r in mb.rows)
        # student and teacher response rows hold the same tokens, in the same order (a logit
        # row at input position p predicts the token at p + 1)
        flat = ids.flatten()
        targets = flat[mb.inputs.response_positions() + 1]
        students = targets[mb.student_index(mb.paired)]
        assert torch.equal(students, targets[mb.teacher_index()])
        expected = torch.cat([torch.tensor(responses[r]) for r in mb.rows])
        assert torch.equal(targets[mb.student_index()], expected)


def test_plan_rejects_a_rollout_over_the_budget():
    prompts, responses, teachers = _rollouts()
    with pytest.raises(ValueError, match=r"rollout 2 needs \d+ tokens \(2 sequence"):
        plan_microbatches([2], prompts, responses, teachers, max_tokens=10)


def _batch(**changes):
    fields = dict(
        prompts=[[1, 2], [3]],
        responses=[[4, 5, 6], [7]],
        old_logprobs=torch.zeros(2, 3),
        token_advantages=torch.ones(2, 3),
        pg_rows=torch.tensor([True, True]),
        distill_rows=torch.tensor([False, False]),
    )
    fields.update(changes)
    return TrainBatch(**fields)


def test_train_batch_validation_names_the_problem():
    _batch()
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        _batch(old_logprobs=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="token_advantages is not finite"):
        _batch(token_advantages=torch.tensor([[1.0, float("nan"), 1.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="distillation row 1 has no teacher prompt"):
        _batch(distill_rows=torch.tensor([False, True]), teacher_prompts=[[1], None])
    with pytest.raises(ValueError, match="empty response"):
        _batch(responses=[[4, 5, 6], []])
    with pytest.raises(ValueError, match="unknown method"):
        UpdateConfig(method="nope")


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(dtype)
    return SimpleNamespace(modules=[module]), module


@pytest.mark.parametrize("mode", ["initial", "ema"])
def test_teacher_copy_swaps_in_and_restores_exactly(mode):
    model, module = _model()
    initial = [p.detach().clone() for p in module.parameters()]
    teacher = TeacherWeights(model, mode, ema_rate=0.5)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    policy = [p.detach().clone() for p in module.parameters()]
    teacher.after_optimizer_step()
    expected = (
        initial
        if mode == "initial"
        else [(a + b) / 2 for a, b in zip(initial, policy, strict=True)]
    )
    with teacher.swapped():
        for p, e in zip(module.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-7)
    for p, e in zip(module.parameters(), policy, strict=True):
        assert torch.equal(p.detach(), e)


def test_bf16_model_keeps_a_float32_ema():
    model, module = _model(torch.bfloat16)
    start = [p.detach().float().clone() for p in module.parameters()]
    teacher = TeacherWeights(model, "ema", ema_rate=1e-3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    policy = [p.detach().clone() for p in module.parameters()]
    teacher.after_optimizer_step()
    # A 1e-3 step of the average is below bf16 resolution near 1; the float32 copy keeps it.
    for ema, s, p in zip(teacher._copy, start, policy, strict=True):
        assert ema.dtype == torch.float32
        torch.testing.assert_close(ema, s + 1e-3 * (p.float() - s), rtol=0, atol=1e-6)
    with teacher.swapped():
        for p, ema in zip(module.parameters(), teacher._copy, strict=True):
            assert torch.equal(p.detach(), ema.to(torch.bfloat16))
    for p, e in zip(module.parameters(), policy, strict=True):
        assert torch.equal(p.detach(), e)


@pytest.mark.parametrize("mode", ["behavior", "current"])
def test_shared_weight_modes_keep_no_copy(mode):
    model, _ = _model()
    teacher = TeacherWeights(model, mode)
    assert not teacher.separate and teacher._copy == []
    assert teacher.rescore_per_minibatch == (mode == "current")
    with pytest.raises(ValueError, match="teacher weights must be one of"):
        TeacherWeights(model, "frozen")


def test_rollout_checks_name_the_rollout():
    from rlrt_megatron.megatron.forward import check_rollouts

    prompts, responses, teachers = _rollouts()
    check_rollouts(prompts, responses, teachers, vocab_size=41)
    with pytest.raises(ValueError, match="rollout 4: teacher prompt has token ids outside"):
        check_rollouts(prompts, responses, teachers, vocab_size=40)
    with pytest.raises(ValueError, match="rollout 1: empty teacher prompt"):
        check_rollouts(prompts, responses, [None, [], None, None, None])
    with pytest.raises(ValueError, match="5 prompts but 4 responses"):
        check_rollouts(prompts, responses[:4], None)


def test_score_result_select_takes_rows_of_every_field():
    from rlrt_megatron.megatron.scoring import ScoreResult

    result = ScoreResult(
        response_mask=torch.ones(3, 2, dtype=torch.bool),
        student_log_prob=torch.arange(6.0).view(3, 2),
        student_entropy=torch.zeros(3, 2),
        has_teacher=torch.tensor([True, False, True]),
        topk_ids=torch.arange(12).view(3, 2, 2),
    )
    part = result.select([2, 0])
    assert part.student_log_prob.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert part.has_teacher.tolist() == [True, True]
    assert part.topk_ids.shape == (2, 2, 2) and part.kl is None
