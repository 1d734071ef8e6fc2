"""GRPO+EB's advantage-form entropy term (Cheng et al., arXiv 2506.14758):
A_t' = A_t + min(α·H_t^detach, |A_t|/κ), against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.algorithms.entropy_advantage import (
    entropy_advantage_term,
    entropy_shaped_advantages,
)

# Row 0: A = 1 (correct); row 1: A = −0.5 with a padded last token; row 2: A = 0 (no signal).
ADV = torch.tensor([[1.0, 1.0, 1.0], [-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]])
ENTROPY = torch.tensor([[0.5, 2.0, 3.0], [0.1, 1.0, 9.9], [1.0, 1.0, 1.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)


def test_hand_computed_values_with_alpha_0_4_kappa_2():
    # Row 0: α·H = 0.2, 0.8, 1.2 against |A|/κ = 0.5 → ψ = 0.2, 0.5, 0.5.
    # Row 1: α·H = 0.04, 0.4 against 0.25 → ψ = 0.04, 0.25; the padded token gets nothing.
    # Row 2: |A|/κ = 0 → ψ = 0 whatever the entropy.
    expected_term = torch.tensor([[0.2, 0.5, 0.5], [0.04, 0.25, 0.0], [0.0, 0.0, 0.0]])
    term = entropy_advantage_term(ADV, ENTROPY, MASK, alpha=0.4, kappa=2.0)
    torch.testing.assert_close(term, expected_term)
    shaped, metrics = entropy_shaped_advantages(ADV, ENTROPY, MASK, alpha=0.4, kappa=2.0)
    torch.testing.assert_close(
        shaped, torch.tensor([[1.2, 1.5, 1.5], [-0.46, -0.25, 0.0], [0.0, 0.0, 0.0]])
    )
    # Mean ψ over the 8 response tokens: (0.2 + 0.5 + 0.5 + 0.04 + 0.25) / 8.
    assert metrics["bonus_mean"] == pytest.approx(1.49 / 8)
    # Tokens with A ≠ 0: 5; the |A|/κ bound is the smaller one at 3 of them.
    assert metrics["clipped_fraction"] == pytest.approx(3 / 5)


def test_the_term_never_flips_a_sign_and_is_detached():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(64, 1, generator=g).expand(64, 16).clone()
    adv[::4] = 0.0
    entropy = (torch.rand(64, 16, generator=g) * 5).requires_grad_(True)
    mask = torch.ones(64, 16, dtype=torch.bool)
    shaped, _ = entropy_shaped_advantages(adv, entropy, mask, alpha=10.0, kappa=1.5)
    assert (torch.sign(shaped) == torch.sign(adv)).all()
    assert (shaped[::4] == 0).all()
    assert not shaped.requires_grad  # H_t^detach: no gradient flows into the entropy
    # α = 0 is plain GRPO.
    torch.testing.assert_close(
        entropy_shaped_advantages(adv, entropy, mask, alpha=0.0, kappa=2.0)[0], adv
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kappa": 1.0}, "kappa must be > 1"),
        ({"alpha": -0.1}, "alpha must be >= 0"),
        ({"entropy": -ENTROPY}, "entropy must be >= 0"),
        ({"entropy": ENTROPY[:, :2]}, "entropy has shape"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {"alpha": 0.4, "kappa": 2.0, "entropy": ENTROPY}
    args.update(kwargs)
    entropy = args.pop("entropy")
    with pytest.raises(ValueError, match=match):
        entropy_advantage_term(ADV, entropy, MASK, **args)


def test_grpo_eb_defaults_to_the_advantage_form_and_keeps_the_loss_form_as_an_option():
    default = AlgorithmConfig(method="grpo_eb")
    assert default.entropy_advantage == (0.4, 2.0)
    assert default.loss_config().entropy_coef == 0.0  # the advantage form replaces the loss term
    loss_form = AlgorithmConfig(method="grpo_eb", entropy_form="loss")
    assert loss_form.entropy_advantage is None and loss_form.loss_config().entropy_coef == 1e-3
    tuned = AlgorithmConfig(method="grpo_eb", entropy_alpha=0.1, entropy_kappa=4.0)
    assert tuned.entropy_advantage == (0.1, 4.0)
    assert AlgorithmConfig(method="grpo").entropy_advantage is None
    assert AlgorithmConfig(method="grpo", entropy_form="advantage").entropy_advantage is None
    with pytest.raises(ValueError, match="algorithm.entropy_kappa must be > 1"):
        AlgorithmConfig(method="grpo_eb", entropy_kappa=1.0)
