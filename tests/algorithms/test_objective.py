import math

import pytest
import torch

from rlrt_megatron.algorithms.distillation import sdpo_distillation_loss, topk_with_tail
from rlrt_megatron.algorithms.losses import policy_loss, policy_loss_per_token
from rlrt_megatron.algorithms.objective import DistillInputs, LossConfig, method_loss
from rlrt_megatron.algorithms.registry import distillation_rows, policy_gradient_rows

B, T, V, K = 4, 3, 7, 3
g = torch.Generator().manual_seed(0)
NEW = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=torch.float64), -1)
TEACHER = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=torch.float64), -1)
TOKENS = torch.randint(0, V, (B, T), generator=g)
LOGP = NEW.gather(-1, TOKENS.unsqueeze(-1)).squeeze(-1)
OLD = LOGP + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)
ADV = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64).unsqueeze(-1).expand(B, T)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
CORRECT = torch.tensor([True, True, False, False])
HAS_TEACHER = torch.tensor([True, True, True, False])
_, S_TOP, S_TAIL, T_TOP, T_TAIL = topk_with_tail(NEW, TEACHER, K)
DISTILL = DistillInputs(
    student_topk_logprobs=S_TOP,
    teacher_topk_logprobs=T_TOP,
    student_tail_logprob=S_TAIL,
    teacher_tail_logprob=T_TAIL,
)
CONFIG = LossConfig(distill_is_clip=None)


def loss_of(method, **kwargs):
    args = dict(
        logprobs=LOGP,
        old_logprobs=OLD,
        token_advantages=ADV,
        response_mask=MASK,
        pg_rows=policy_gradient_rows(method, CORRECT, HAS_TEACHER),
        distill_rows=distillation_rows(method, CORRECT, HAS_TEACHER),
        config=CONFIG,
        distill=DISTILL,
    )
    args.update(kwargs)
    return method_loss(method, **args)


def test_grpo_is_the_policy_loss():
    loss, metrics = loss_of("grpo")
    reference, _ = policy_loss(LOGP, OLD, ADV, MASK)
    torch.testing.assert_close(loss, reference)
    assert metrics["pg_tokens"] == MASK.sum().item()


def test_sdpo_is_the_distillation_loss_on_rows_with_a_teacher():
    loss, _ = loss_of("sdpo")
    rows = HAS_TEACHER.unsqueeze(-1) & MASK.bool()
    reference, _ = sdpo_distillation_loss(
        S_TOP, T_TOP, rows, student_tail_logprob=S_TAIL, teacher_tail_logprob=T_TAIL, is_clip=None
    )
    torch.testing.assert_close(loss, reference)


def test_srpo_shares_one_token_mean_between_routes():
    weights = torch.full((B, T), 2.0, dtype=torch.float64)
    distill = DistillInputs(**{**DISTILL.__dict__, "token_weights": weights})
    loss, metrics = loss_of("srpo", distill=distill)
    # Row 2 (incorrect, teacher) → distillation, rows 0, 1, 3 → GRPO; one denominator: 9 tokens.
    pg, _ = policy_loss_per_token(LOGP, OLD, ADV, MASK)
    sd_rows = torch.tensor([False, False, True, False]).unsqueeze(-1) & MASK.bool()
    sd, _ = sdpo_distillation_loss(
        S_TOP,
        T_TOP,
        sd_rows,
        student_tail_logprob=S_TAIL,
        teacher_tail_logprob=T_TAIL,
        is_clip=None,
        aggregation="token-mean",
        normalizer=1.0,
    )
    pg_sum = (pg * (MASK.bool() & ~sd_rows)).sum()
    expected = (pg_sum + 2.0 * sd) / MASK.sum()
    torch.testing.assert_close(loss, expected)
    assert metrics["distill_tokens"] == 1 and metrics["pg_tokens"] == 8


def test_grpo_eb_adds_the_entropy_bonus_with_gradient():
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64).requires_grad_(True)
    config = LossConfig(entropy_coef=0.1)
    loss, metrics = loss_of("grpo_eb", entropy=entropy, config=config)
    reference, _ = policy_loss(LOGP, OLD, ADV, MASK)
    bonus = -0.1 * (entropy * MASK).sum() / MASK.sum()
    torch.testing.assert_close(loss, reference + bonus)
    loss.backward()
    assert (entropy.grad[MASK.bool()] < 0).all() and (entropy.grad[~MASK.bool()] == 0).all()
    assert math.isfinite(metrics["entropy"])


def test_gradients_reach_the_policy_through_both_terms():
    logp = LOGP.clone().requires_grad_(True)
    s_top = S_TOP.clone().requires_grad_(True)
    distill = DistillInputs(**{**DISTILL.__dict__, "student_topk_logprobs": s_top})
    loss, _ = loss_of("srpo", logprobs=logp, distill=distill)
    loss.backward()
    assert logp.grad[0].abs().sum() > 0 and s_top.grad[2].abs().sum() > 0
    assert s_top.grad[0].abs().sum() == 0  # row 0 goes to GRPO, not to distillation


def test_errors():
    with pytest.raises(ValueError, match="overlap"):
        loss_of("grpo", distill_rows=torch.tensor([True, False, False, False]))
    with pytest.raises(ValueError, match="pass `distill`"):
        loss_of("sdpo", distill=None)
    with pytest.raises(ValueError, match="needs the per-token `entropy`"):
        loss_of("grpo_eb", config=LossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="aggregation must be one of"):
        LossConfig(aggregation="mean")
