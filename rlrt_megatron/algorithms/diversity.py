"""DIVER: sequence-level diversity reward shaping (Diversity-Incentivized Exploration, arXiv
2509.26209; official code NJU-RL/DIVER).

Within the group of G rollouts of one prompt, each rollout gets a diversity score d_i ∈ [0, 1]:

    textual   TD(o_i) = 1/(G−1) · Σ_{j≠i} (1 − ½·(BLEU(o_i, o_j) + BLEU(o_j, o_i)))
    equation  ED(o_i) = |F(o_i) \\ ∪_{j≠i} F(o_j)| / |F(o_i)|      (0 when o_i has no formula)
    mix       TD + ED

(BLEU: sentence BLEU on whitespace tokens up to 5-grams, weights (0.02, 0.1, 0.15, 0.25, 0.38),
no smoothing, as the official code; F(o): the set of LaTeX formulas \\[..\\], \\(..\\), $..$.)
The score enters as a potential-based shaping term that telescopes to the final state, applied
only to correct rollouts and clipped (the paper's "conditional" and "balanced" shaping), *before*
the group normalization of GRPO:

    r'_i = r_i + λ · clip(d_i, 0, σ) · 𝟙(r_i = 1)
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch

from rlrt_megatron.algorithms._checks import check_finite, check_non_negative, check_tensor

DiversityMetric = Literal["textual", "equation", "mix"]
BLEU_WEIGHTS = (0.02, 0.1, 0.15, 0.25, 0.38)
_FORMULA = re.compile(r"\\\[(.+?)\\\]|\\\((.+?)\\\)|\$\$(.+?)\$\$|\$(.+?)\$", re.DOTALL)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(
    hypothesis: Sequence[str], reference: Sequence[str], weights: Sequence[float] = BLEU_WEIGHTS
) -> float:
    """Sentence BLEU of token lists without smoothing (0 when any n-gram precision is 0).

    p_n = Σ_g min(c_hyp(g), c_ref(g)) / Σ_g c_hyp(g)       over n-grams g
    BP  = 1 if |hyp| > |ref| else exp(1 − |ref|/|hyp|)
    BLEU = BP · exp(Σ_n w_n · log p_n)
    """
    if not hypothesis or not reference:
        return 0.0
    log_sum = 0.0
    for n, weight in enumerate(weights, start=1):
        hyp = _ngrams(hypothesis, n)
        total = sum(hyp.values())
        if total == 0:
            return 0.0
        ref = _ngrams(reference, n)
        matched = sum(min(count, ref[gram]) for gram, count in hyp.items())
        if matched == 0:
            return 0.0
        log_sum += weight * math.log(matched / total)
    c, r = len(hypothesis), len(reference)
    brevity = 1.0 if c > r else math.exp(1.0 - r / c)
    return brevity * math.exp(log_sum)


def textual_diversity(responses: Sequence[str], max_chars: int | None = None) -> list[float]:
    """TD of each response against the rest of its group (see the module docstring)."""
    texts = [r[:max_chars] if max_chars else r for r in responses]
    tokens = [t.split() for t in texts]
    g = len(tokens)
    if g < 2:
        return [0.0] * g
    similarity = [[0.0] * g for _ in range(g)]
    for i in range(g):
        for j in range(i + 1, g):
            s = 0.5 * (sentence_bleu(tokens[i], tokens[j]) + sentence_bleu(tokens[j], tokens[i]))
            similarity[i][j] = similarity[j][i] = s
    return [1.0 - sum(similarity[i][j] for j in range(g) if j != i) / (g - 1) for i in range(g)]


def extract_formulas(text: str) -> set[str]:
    """The set of LaTeX formulas in ``text`` (display \\[..\\], inline \\(..\\), $$..$$, $..$),
    whitespace-normalised."""
    found = set()
    for match in _FORMULA.finditer(text):
        body = next(group for group in match.groups() if group is not None)
        body = " ".join(body.split())
        if body:
            found.add(body)
    return found


def equation_diversity(responses: Sequence[str], max_chars: int | None = None) -> list[float]:
    """ED of each response: the fraction of its formulas that no other rollout of the group has."""
    formulas = [extract_formulas(r[:max_chars] if max_chars else r) for r in responses]
    scores = []
    for i, own in enumerate(formulas):
        if not own:
            scores.append(0.0)
            continue
        others = set().union(*(f for j, f in enumerate(formulas) if j != i))
        scores.append(len(own - others) / len(own))
    return scores


def group_diversity(
    responses: Sequence[str], metric: DiversityMetric = "equation", max_chars: int | None = None
) -> list[float]:
    """The chosen diversity score of every response of one group."""
    if metric == "textual":
        return textual_diversity(responses, max_chars)
    if metric == "equation":
        return equation_diversity(responses, max_chars)
    if metric == "mix":
        td = textual_diversity(responses, max_chars)
        ed = equation_diversity(responses, max_chars)
        return [a + b for a, b in zip(td, ed, strict=True)]
    raise ValueError(f"metric must be 'textual', 'equation' or 'mix', got {metric!r}")


def diversity_shaped_rewards(
    rewards: torch.Tensor, diversity: torch.Tensor, coef: float, clip: float
) -> torch.Tensor:
    """DIVER's conditional, clipped shaping: r' = r + coef · clip(d, 0, clip) · 𝟙(r = 1).

    Shapes: ``rewards`` [G, K] in {0, 1}, ``diversity`` [G, K] → [G, K]. Feed the result to
    `group_advantages` (the bonus is added before group normalization).
    """
    check_tensor("rewards", rewards, ndim=2)
    check_tensor("diversity", diversity, ndim=2)
    if rewards.shape != diversity.shape:
        raise ValueError(
            f"diversity has shape {tuple(diversity.shape)}, expected {tuple(rewards.shape)}"
        )
    check_finite("rewards", rewards.float())
    check_finite("diversity", diversity.float())
    check_non_negative("coef", coef)
    check_non_negative("clip", clip)
    rewards = rewards.float()
    bonus = coef * diversity.float().clamp(0.0, clip) * (rewards == 1).float()
    return rewards + bonus
