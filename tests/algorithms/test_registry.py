import re

import pytest
import torch

from rlrt_megatron.algorithms.registry import (
    METHODS,
    MethodDefaults,
    MethodSpec,
    distillation_rows,
    get_method,
    policy_gradient_rows,
    register_method,
    teacher_forward_rows,
)
from rlrt_megatron.algorithms.reweighting import token_advantages

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


def _custom(**fields) -> MethodSpec:
    base = dict(
        name="rlrt_test_incorrect",
        teacher_context="peer_rollout",
        token_weight="reverse_teacher",
        weight_gate="incorrect",
        defaults=MethodDefaults(normalize_by_std=True, lr=1e-6, lam_init=0.5, eps_w=0.5),
    )
    return MethodSpec(**{**base, **fields})


@pytest.fixture
def restore_methods():
    saved = dict(METHODS)
    yield
    METHODS.clear()
    METHODS.update(saved)


def test_register_method_is_used_by_the_core(restore_methods):
    """A registered spec drives the row selection and the token weights with no other change."""
    spec = register_method(_custom())
    assert get_method("rlrt_test_incorrect") is spec
    correct = torch.tensor([True, False, True, False])
    has_teacher = torch.ones(4, dtype=torch.bool)
    rows = teacher_forward_rows(
        "rlrt_test_incorrect",
        correct=correct,
        has_context=has_teacher,
        advantages=torch.tensor([1.0, -1.0, 1.0, -1.0]),
        lam=0.5,
    )
    assert rows.tolist() == [False, True, False, True]
    # Incorrect row, D = log 2: w = exp(−log 2) = 0.5 → (1 − 0.5) + 0.5·0.5 = 0.75 (ε_w 0.5).
    a_t = token_advantages(
        "rlrt_test_incorrect",
        torch.tensor([1.0, -1.0]),
        torch.tensor([True, False]),
        torch.log(torch.tensor([[0.5], [0.5]])),
        torch.log(torch.tensor([[0.25], [0.25]])),
        torch.ones(2, 1),
        torch.ones(2, dtype=torch.bool),
        lam=0.5,
        eps_w=0.5,
    )
    assert torch.allclose(a_t, torch.tensor([[1.0], [-0.75]]))


def test_register_method_accepts_every_builtin(restore_methods):
    for spec in list(METHODS.values()):
        assert register_method(spec) is spec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "rlrt"}, "already registered"),
        ({"name": "my method"}, "must be an identifier"),
        ({"weight_gate": "sometimes"}, "weight_gate='sometimes'"),
        ({"weight_gate": "not_distilled"}, "weight_gate='not_distilled'"),
        ({"weight_gate": "none"}, "token_weight and weight_gate go together"),
        ({"teacher_context": "none"}, "needs a teacher"),
        (
            {"token_weight": "none", "weight_gate": "none", "policy_gradient_rows": "none"},
            "gives no row any loss term",
        ),
    ],
)
def test_register_method_rejects_bad_specs(restore_methods, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        register_method(_custom(**fields))
    assert "my method" not in METHODS and METHODS["rlrt"].weight_gate == "correct"
