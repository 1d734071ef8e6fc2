import pytest
import torch

from rlrt_megatron.algorithms.registry import (
    METHODS,
    distillation_rows,
    get_method,
    policy_gradient_rows,
    teacher_forward_rows,
)

CORRECT = torch.tensor([True, True, True, False, False])
HAS_CONTEXT = torch.tensor([True, False, True, True, False])
ADV = torch.tensor([0.5, 0.5, 0.0, -0.5, -0.5])


def test_every_method_is_registered_with_paper_defaults():
    assert set(METHODS) == {"grpo", "grpo_eb", "diver", "rlrt", "rlrt_all", "rlsd", "sdpo", "srpo"}
    assert get_method("rlrt").defaults.lr == 1e-6 and get_method("rlrt").defaults.eps_w == 1.0
    assert (
        get_method("rlrt").defaults.normalize_by_std
        and not get_method("grpo").defaults.normalize_by_std
    )
    assert (
        get_method("rlsd").defaults.eps_w == 0.2
        and get_method("rlsd").defaults.lam_decay_steps == 50
    )
    assert get_method("sdpo").defaults.lr == 1e-5 and get_method("srpo").defaults.lr == 5e-6
    assert get_method("sdpo").defaults.distill_topk == 100
    assert get_method("rlsd").teacher_context == "ground_truth"
    assert get_method("rlrt").needs_teacher_logprobs and not get_method("rlrt").needs_topk
    assert get_method("srpo").needs_topk and get_method("srpo").needs_teacher_entropy
    assert get_method("grpo_eb").needs_student_entropy and not get_method("grpo").needs_teacher


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown method 'dpo'.*rlrt"):
        get_method("dpo")


def test_teacher_forward_rows_hand_computed():
    rows = lambda m, lam=0.5: teacher_forward_rows(  # noqa: E731
        m, correct=CORRECT, has_context=HAS_CONTEXT, advantages=ADV, lam=lam
    ).tolist()
    # RLRT: correct & has a peer & A ≠ 0 & λ > 0 → only row 0 (row 2 has A = 0).
    assert rows("rlrt") == [True, False, False, False, False]
    assert rows("rlrt", lam=0.0) == [False] * 5
    assert rows("rlrt_all") == [True, False, False, True, False]
    assert rows("rlsd") == [True, False, False, True, False]
    # SDPO: every row with a context; SRPO: incorrect rows with a context.
    assert rows("sdpo") == [True, False, True, True, False]
    assert rows("srpo") == [False, False, False, True, False]
    assert rows("grpo") == [False] * 5 and rows("grpo_eb") == [False] * 5


def test_loss_routing():
    assert distillation_rows("srpo", CORRECT, HAS_CONTEXT).tolist() == [
        False,
        False,
        False,
        True,
        False,
    ]
    assert policy_gradient_rows("srpo", CORRECT, HAS_CONTEXT).tolist() == [
        True,
        True,
        True,
        False,
        True,
    ]
    assert policy_gradient_rows("sdpo", CORRECT, HAS_CONTEXT).tolist() == [False] * 5
    assert distillation_rows("sdpo", CORRECT, HAS_CONTEXT).tolist() == HAS_CONTEXT.tolist()
    for name in ("grpo", "rlrt", "rlsd"):
        assert policy_gradient_rows(name, CORRECT, HAS_CONTEXT).all()
        assert not distillation_rows(name, CORRECT, HAS_CONTEXT).any()


def test_bad_flags():
    with pytest.raises(ValueError, match="has_teacher must be a bool"):
        distillation_rows("srpo", CORRECT, HAS_CONTEXT.float())
    with pytest.raises(ValueError, match="advantages has shape"):
        teacher_forward_rows(
            "rlrt", correct=CORRECT, has_context=HAS_CONTEXT, advantages=ADV[:2], lam=0.5
        )
