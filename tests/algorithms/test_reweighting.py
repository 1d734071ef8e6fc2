import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrt_megatron.algorithms.reweighting import (
    REWEIGHT_SUM_KEYS,
    DeferredReweighting,
    clipped_token_weights,
    token_advantages,
    token_weight_stats,
    weight_stats_from_sums,
)

# Three rollouts, three tokens. Row 0: correct with a teacher; row 1: correct without a teacher;
# row 2: incorrect with a teacher, last token masked. D = log P_S − log P_T is given directly.
ADV = torch.tensor([0.8, 0.8, -0.5])
CORRECT = torch.tensor([True, True, False])
HAS_TEACHER = torch.tensor([True, False, True])
MASK = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
STUDENT = torch.tensor([[-1.0, -2.0, -0.5], [-0.7, -0.2, -1.1], [-0.3, -0.9, -4.0]])
D = torch.tensor([[0.5, -0.3, 2.0], [9.0, -9.0, 0.0], [0.1, -0.1, 0.0]])
TEACHER = STUDENT - D


def run(method, lam=0.5, eps_w=0.2, **overrides):
    args = dict(
        advantages=ADV,
        correct=CORRECT,
        student_logprobs=STUDENT,
        teacher_logprobs=TEACHER,
        response_mask=MASK,
        has_teacher=HAS_TEACHER,
        lam=lam,
        eps_w=eps_w,
    )
    args.update(overrides)
    return token_advantages(method, **args)


def test_rlrt_hand_computed():
    # Row 0: w = exp(+D) = (1.65, 0.74, 7.39) → clip[0.8, 1.2] = (1.2, 0.8, 1.2);
    # A_t = 0.8·(0.5 + 0.5·w) = (0.88, 0.72, 0.88). Row 1: no teacher → A. Row 2: incorrect → A.
    expected = torch.tensor([[0.88, 0.72, 0.88], [0.8, 0.8, 0.8], [-0.5, -0.5, 0.0]])
    torch.testing.assert_close(run("rlrt"), expected)


def test_rlrt_all_reweights_incorrect_rows_too():
    # Row 2 (A < 0): w = exp(−D) = (e^-0.1, e^0.1), inside the clip; masked token → 0.
    f1, f2 = 0.5 + 0.5 * math.exp(-0.1), 0.5 + 0.5 * math.exp(0.1)
    expected = torch.tensor([[0.88, 0.72, 0.88], [0.8, 0.8, 0.8], [-0.5 * f1, -0.5 * f2, 0.0]])
    torch.testing.assert_close(run("rlrt_all"), expected)


def test_rlsd_uses_the_inverse_weight_on_all_rows():
    # Row 0: w = exp(−D) = (0.61, 1.35, 0.14) → clip = (0.8, 1.2, 0.8) → (0.72, 0.88, 0.72).
    # Row 2 (A < 0): w = exp(+D) = (e^0.1, e^-0.1).
    f1, f2 = 0.5 + 0.5 * math.exp(0.1), 0.5 + 0.5 * math.exp(-0.1)
    expected = torch.tensor([[0.72, 0.88, 0.72], [0.8, 0.8, 0.8], [-0.5 * f1, -0.5 * f2, 0.0]])
    torch.testing.assert_close(run("rlsd"), expected)


@pytest.mark.parametrize("method", ["grpo", "grpo_eb", "sdpo", "srpo"])
def test_methods_without_reweighting_return_plain_advantages(method):
    expected = torch.tensor([[0.8] * 3, [0.8] * 3, [-0.5, -0.5, 0.0]])
    torch.testing.assert_close(run(method), expected)


def test_extreme_log_ratios_stay_finite():
    huge = torch.tensor([[1e4, -1e4, 88.8], [3e38, -3e38, 0.0], [200.0, -200.0, 0.0]])
    for method in ("rlrt", "rlrt_all", "rlsd"):
        out = run(method, teacher_logprobs=-huge, student_logprobs=huge, eps_w=1.0)
        assert torch.isfinite(out).all(), method
        # ε_w = 1: w ∈ [0, 2] so A_t ∈ A·[0.5, 1.5].
        assert (out.abs() <= 1.5 * 0.8 + 1e-6).all()


def test_zero_advantage_with_infinite_log_ratio_is_not_nan():
    weights = clipped_token_weights(
        torch.tensor([0.0]), torch.tensor([[float("inf"), float("-inf")]]), 1, 0.5
    )
    assert torch.equal(weights, torch.ones(1, 2))


def test_float64_inputs_give_float64_output():
    out = run("rlrt", student_logprobs=STUDENT.double(), teacher_logprobs=TEACHER.double())
    assert out.dtype == torch.float64


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"lam": 1.5}, "lam must be in"),
        ({"lam": -0.1}, "lam must be in"),
        ({"eps_w": -0.1}, "eps_w must be >= 0"),
        ({"student_logprobs": STUDENT[:, :2]}, "student_logprobs has shape"),
        ({"teacher_logprobs": TEACHER[:2]}, "teacher_logprobs has shape"),
        ({"advantages": ADV.unsqueeze(-1)}, "advantages must have 1 dims"),
        ({"correct": CORRECT.float()}, "correct must be a bool"),
        ({"has_teacher": HAS_TEACHER[:2]}, "has_teacher has shape"),
        ({"response_mask": torch.tensor([[1, 1, 1], [0, 0, 0], [1, 1, 0]])}, "no response tokens"),
        (
            {"student_logprobs": STUDENT.clone().fill_(float("nan"))},
            "student_logprobs contains NaN",
        ),
        (
            {"teacher_logprobs": torch.where(D > 1, float("nan"), TEACHER)},
            "teacher_logprobs contains NaN",
        ),
    ],
)
def test_bad_input_raises_naming_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        run("rlrt", **overrides)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        run("ppo")


def test_teacher_values_of_rows_without_teacher_are_ignored():
    teacher = TEACHER.clone()
    teacher[1] = float("nan")
    torch.testing.assert_close(run("rlrt", teacher_logprobs=teacher), run("rlrt"))


def test_weight_stats():
    stats = token_weight_stats("rlrt", ADV, CORRECT, STUDENT, TEACHER, MASK, HAS_TEACHER, eps_w=0.2)
    # Reweighted tokens: row 0 only (3 tokens) of 8 response tokens; w = (1.2, 0.8, 1.2).
    assert stats["reweighted_tokens"] == 3
    assert stats["weight_gt1_frac"] == pytest.approx(2 / 8)
    assert stats["weight_lt1_frac"] == pytest.approx(1 / 8)
    assert stats["mean_log_ratio_correct"] == pytest.approx((0.5 - 0.3 + 2.0) / 3)


# --- property tests -------------------------------------------------------------------------

METHODS = ["grpo", "grpo_eb", "rlrt", "rlrt_all", "rlsd", "sdpo", "srpo"]


@st.composite
def batches(draw):
    b = draw(st.integers(1, 6))
    t = draw(st.integers(1, 6))
    floats = st.floats(-200, 200, allow_nan=False, width=32)
    adv = torch.tensor(draw(st.lists(st.floats(-3, 3, width=32), min_size=b, max_size=b)))
    correct = torch.tensor(draw(st.lists(st.booleans(), min_size=b, max_size=b)))
    has_teacher = torch.tensor(draw(st.lists(st.booleans(), min_size=b, max_size=b)))
    student = torch.tensor(
        draw(st.lists(st.lists(floats, min_size=t, max_size=t), min_size=b, max_size=b))
    )
    teacher = torch.tensor(
        draw(st.lists(st.lists(floats, min_size=t, max_size=t), min_size=b, max_size=b))
    )
    mask = torch.tensor(
        draw(st.lists(st.lists(st.booleans(), min_size=t, max_size=t), min_size=b, max_size=b))
    )
    mask[:, 0] = True  # every row holds at least one response token
    lam = draw(st.floats(0, 1))
    eps_w = draw(st.floats(0, 2))
    return dict(
        advantages=adv,
        correct=correct,
        student_logprobs=student,
        teacher_logprobs=teacher,
        response_mask=mask,
        has_teacher=has_teacher,
        lam=lam,
        eps_w=eps_w,
    )


@settings(max_examples=150, deadline=None)
@given(batch=batches())
def test_lambda_zero_makes_every_method_grpo(batch):
    batch["lam"] = 0.0
    grpo = token_advantages("grpo", **batch)
    for method in METHODS:
        torch.testing.assert_close(token_advantages(method, **batch), grpo)


@settings(max_examples=150, deadline=None)
@given(batch=batches())
def test_rlrt_leaves_incorrect_rows_at_a(batch):
    out = token_advantages("rlrt", **batch)
    grpo = token_advantages("grpo", **batch)
    wrong = ~batch["correct"]
    torch.testing.assert_close(out[wrong], grpo[wrong])


@settings(max_examples=150, deadline=None)
@given(batch=batches())
def test_reweighting_is_bounded_by_lambda_eps(batch):
    a = batch["advantages"].unsqueeze(-1)
    bound = batch["lam"] * batch["eps_w"] * a.abs()
    mask = batch["response_mask"]
    for method in METHODS:
        out = token_advantages(method, **batch)
        assert torch.isfinite(out).all()
        deviation = (out - a).abs()[mask]
        assert (deviation <= bound.expand_as(out)[mask] + 1e-5).all(), method
        assert (out[~mask] == 0).all()


@settings(max_examples=150, deadline=None)
@given(
    adv=st.lists(st.floats(-3, 3, width=32), min_size=1, max_size=5),
    d=st.floats(-10, 10, width=32),
)
def test_unclipped_rlrt_weight_is_reciprocal_of_rlsd(adv, d):
    a = torch.tensor(adv, dtype=torch.float64)
    log_ratio = torch.full((a.shape[0], 3), d, dtype=torch.float64)
    no_clip = 1e9  # log(1 + 1e9) ≈ 20.7 > |D|: the clip is inactive
    rlrt = clipped_token_weights(a, log_ratio, +1, no_clip)
    rlsd = clipped_token_weights(a, log_ratio, -1, no_clip)
    torch.testing.assert_close(rlrt * rlsd, torch.ones_like(rlrt))


# --- the weights applied in the update (DeferredReweighting) ----------------------------------


def _deferred(batch):
    return DeferredReweighting(
        advantages=batch["advantages"],
        correct=batch["correct"],
        has_teacher=batch["has_teacher"],
        teacher_logprobs=batch["teacher_logprobs"],
        lam=batch["lam"],
        eps_w=batch["eps_w"],
    )


@settings(max_examples=150, deadline=None)
@given(batch=batches(), cut=st.integers(0, 6))
def test_deferred_weights_per_part_equal_the_whole_batch(batch, cut):
    """The update applies Eq. 6-7 per micro-batch (any split of the rows, each cut to its own
    longest response); the parts give the whole batch's A_t and, summed, its statistics."""
    b = batch["response_mask"].shape[0]
    deferred = _deferred(batch)
    order = torch.randperm(b, generator=torch.Generator().manual_seed(cut))
    parts = [order[: cut % (b + 1)], order[cut % (b + 1) :]]
    for method in METHODS:
        expected = token_advantages(method, **batch)
        sums = dict.fromkeys(REWEIGHT_SUM_KEYS, 0.0)
        for rows in parts:
            if len(rows) == 0:
                continue
            mask = batch["response_mask"][rows]
            student = batch["student_logprobs"][rows].requires_grad_()
            values, part = deferred.apply(method, rows, student, mask)
            assert not values.requires_grad  # the weights are constants of the loss
            torch.testing.assert_close(values, expected[rows])
            for key in REWEIGHT_SUM_KEYS:
                sums[key] += part[key]
        stats = weight_stats_from_sums(sums, float(batch["response_mask"].sum()))
        reference = token_weight_stats(
            method,
            batch["advantages"],
            batch["correct"],
            batch["student_logprobs"],
            batch["teacher_logprobs"],
            batch["response_mask"],
            batch["has_teacher"],
            eps_w=batch["eps_w"],
        )
        assert stats.keys() == reference.keys()
        for key, value in reference.items():
            assert stats[key] == pytest.approx(value, rel=1e-5, abs=1e-4, nan_ok=True), key


def test_deferred_reweighting_validates_its_inputs():
    args = dict(
        advantages=ADV,
        correct=CORRECT,
        has_teacher=HAS_TEACHER,
        teacher_logprobs=TEACHER,
        lam=0.5,
        eps_w=0.2,
    )
    with pytest.raises(ValueError, match="correct"):
        DeferredReweighting(**{**args, "correct": CORRECT.float()})
    with pytest.raises(ValueError, match="teacher_logprobs has 2 rows, expected 3"):
        DeferredReweighting(**{**args, "teacher_logprobs": TEACHER[:2]})
    with pytest.raises(ValueError, match="lam"):
        DeferredReweighting(**{**args, "lam": 1.5})
