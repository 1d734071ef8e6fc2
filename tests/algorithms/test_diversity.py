import math

import pytest
import torch

from rlrt_megatron.algorithms.advantages import group_advantages
from rlrt_megatron.algorithms.diversity import (
    diversity_shaped_rewards,
    equation_diversity,
    extract_formulas,
    group_diversity,
    sentence_bleu,
    textual_diversity,
)
from rlrt_megatron.algorithms.registry import get_method


def test_bleu_hand_computed():
    hyp, ref = "a b c d e f".split(), "a b c d e g".split()
    # p_1..p_5 = 5/6, 4/5, 3/4, 2/3, 1/2; equal lengths → BP = 1.
    expected = math.exp(
        0.02 * math.log(5 / 6)
        + 0.1 * math.log(4 / 5)
        + 0.15 * math.log(3 / 4)
        + 0.25 * math.log(2 / 3)
        + 0.38 * math.log(1 / 2)
    )
    assert expected == pytest.approx(0.647993, abs=1e-6)
    assert sentence_bleu(hyp, ref) == pytest.approx(expected)
    assert sentence_bleu(hyp, hyp) == 1.0
    assert sentence_bleu("x y z u v".split(), hyp) == 0.0  # no shared unigram
    assert sentence_bleu("a b c".split(), hyp) == 0.0  # no 4-gram at all
    # Brevity penalty: a 5-token prefix of a 6-token reference: exp(1 − 6/5).
    assert sentence_bleu("a b c d e".split(), hyp) == pytest.approx(math.exp(1 - 6 / 5))


def test_textual_diversity_of_a_group():
    same = "a b c d e f"
    td = textual_diversity([same, same, "a b c d e g"])
    bleu = 0.6479931
    assert td[0] == pytest.approx(1 - (1 + bleu) / 2, abs=1e-6)
    assert td[2] == pytest.approx(1 - bleu, abs=1e-6)
    assert textual_diversity(["only one"]) == [0.0]
    assert textual_diversity(["a b c d e f", "a b c d e f zz"], max_chars=11) == [0.0, 0.0]


def test_equation_diversity_hand_computed():
    responses = [
        r"We get \(x=2\) and $y=3$. So \[x+y=5\]",
        r"Then $y = 3$ and $z=1$",
        "No formulas here.",
    ]
    assert extract_formulas(responses[0]) == {"x=2", "y=3", "x+y=5"}
    # r0: x=2 and x+y=5 are its own, y=3 is shared (whitespace-normalised "y = 3" ≠ "y=3"
    # only in spacing inside; normalisation keeps inner spaces, so it counts as different).
    ed = equation_diversity(responses)
    assert ed[0] == pytest.approx(1.0)
    assert ed[1] == pytest.approx(1.0)
    assert ed[2] == 0.0
    assert equation_diversity([r"$a$ $b$", r"$a$"]) == [0.5, 0.0]
    mix = group_diversity([r"$a$ $b$", r"$a$"], metric="mix")
    assert mix == pytest.approx([0.5 + 1.0, 0.0 + 1.0])
    with pytest.raises(ValueError, match="metric must be"):
        group_diversity(["x"], metric="embedding")


def test_shaping_only_rewards_correct_rollouts_and_clips():
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    diversity = torch.tensor([[0.9, 0.2, 0.9, 0.0]])
    shaped = diversity_shaped_rewards(rewards, diversity, coef=1.0, clip=0.68)
    torch.testing.assert_close(shaped, torch.tensor([[1.68, 1.2, 0.0, 0.0]]))
    # Before normalization: the bonus reorders correct rollouts' advantages.
    adv = group_advantages(shaped, normalize_by_std=True)
    assert adv[0, 0] > adv[0, 1] > 0 > adv[0, 2] == adv[0, 3]
    with pytest.raises(ValueError, match="diversity has shape"):
        diversity_shaped_rewards(rewards, diversity[:, :2], coef=1.0, clip=1.0)
    with pytest.raises(ValueError, match="coef must be >= 0"):
        diversity_shaped_rewards(rewards, diversity, coef=-1.0, clip=1.0)


def test_diver_registry_entry():
    spec = get_method("diver")
    assert spec.reward_shaping == "diversity" and not spec.needs_teacher
    assert spec.defaults.diversity_coef == 1.0 and spec.defaults.diversity_clip == 0.68
