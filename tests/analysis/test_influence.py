"""Inf_S(t) (Eq. 5) and Theorem 2 (Inf_S(t)² ≤ 2·D̄_t), and the top-k + tail estimator."""

from __future__ import annotations

import math

import pytest
import torch

from rlrt_megatron.analysis.influence import (
    bayes_teacher,
    influence,
    influence_from_candidates,
    influence_stats,
    kl_divergence,
    spearman,
    summarize_influence,
)


def test_influence_hand_computed():
    # P_S = (0.5, 0.5), f = (1, 0.5): f̄ = 0.75, Inf = 0.5·0.25 + 0.5·0.25 = 0.25 (Eq. 5).
    p, f = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.5])
    assert float(influence(p, f)) == pytest.approx(0.25)
    # Theorem 2's teacher: P_T = P_S·f/f̄ = (2/3, 1/3);
    # D̄ = 0.5·ln(0.5/(2/3)) + 0.5·ln(0.5/(1/3)) = 0.5·ln(1.125) = 0.0588915.
    teacher = bayes_teacher(p, f)
    assert teacher.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert float(kl_divergence(p, teacher)) == pytest.approx(0.5 * math.log(1.125))
    assert 0.25**2 <= 2 * 0.5 * math.log(1.125)
    # KL conventions: 0·log 0 = 0; +inf where q = 0 < p.
    assert float(kl_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))) == (
        pytest.approx(math.log(2))
    )
    assert float(kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))) == math.inf
    with pytest.raises(ValueError, match="f̄ = 0"):
        bayes_teacher(p, torch.zeros(2))


@pytest.mark.parametrize("concentration", [0.05, 0.5, 5.0])
def test_theorem_2_bound_on_random_distributions(concentration):
    """Theorem 2 as stated. Hypothesis (the paper's teacher): the teacher has seen a correct
    solution and is the student conditioned on success, P_T(v) = P_S(v)·f(v)/f̄_S^t, with f(v) ∈
    [0, 1] the success probability of continuing with v and f̄ > 0. Claim: Inf_S(t)² ≤ 2·D̄_t,
    D̄_t = KL(P_S ‖ P_T). Random P_S (Dirichlet, from peaked to flat), random f (some exactly 0
    or 1), vocabularies of 2 to 50 tokens."""
    generator = torch.Generator().manual_seed(0)
    for vocab in (2, 3, 10, 50):
        alpha = torch.full((vocab,), concentration, dtype=torch.float64)
        p = torch.distributions.Dirichlet(alpha).sample((400,))
        f = torch.rand(400, vocab, generator=generator, dtype=torch.float64)
        f = torch.where(f < 0.1, torch.zeros_like(f), torch.where(f > 0.9, torch.ones_like(f), f))
        keep = (p * f).sum(-1) > 0
        p, f = p[keep], f[keep]
        inf = influence(p, f)
        kl = kl_divergence(p, bayes_teacher(p, f))
        assert bool((inf**2 <= 2 * kl + 1e-12).all())
        # Inf_S = f̄·‖P_S − P_T‖₁: the normalised variant Inf/f̄ is the (stronger) L1 distance.
        l1 = (p - bayes_teacher(p, f)).abs().sum(-1)
        assert torch.allclose(inf, (p * f).sum(-1) * l1, atol=1e-12)


def test_bound_needs_the_hypothesis():
    # Without P_T ∝ P_S·f the bound is no theorem: a teacher equal to the student (D̄ = 0) with
    # f = (1, 0) has Inf = 0.5.
    p, f = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    assert float(influence(p, f)) == pytest.approx(0.5)
    assert float(kl_divergence(p, p)) == 0.0


def test_candidates_with_a_tail_bucket_hand_computed():
    # Candidates P_S = (0.5, 0.3) (true, not renormalised), f = (1, 0); tail mass 0.2.
    # f̄ = 0.6 measured directly → f_tail = (0.6 − 0.5) / 0.2 = 0.5.
    s = influence_from_candidates([0.5, 0.3], [1.0, 0.0], 0.6)
    assert s["tail_mass"] == pytest.approx(0.2) and s["f_tail"] == pytest.approx(0.5)
    assert s["f_mean"] == pytest.approx(0.6) and not s["f_tail_clipped"]
    # Inf = 0.5·0.4 + 0.3·0.6 + 0.2·0.1 = 0.4; upper: the tail term becomes
    # 0.2·(0.5·0.4 + 0.5·0.6) = 0.1, so 0.38 + 0.1 = 0.48.
    assert s["influence"] == pytest.approx(0.4)
    assert s["influence_upper"] == pytest.approx(0.48)
    assert s["influence_normalised"] == pytest.approx(0.4 / 0.6)
    # Tilt on the buckets: KL = 0.5·ln(0.6/1) + 0.3·ln(0.6/0) + … = inf (a bucket with f = 0).
    assert s["kl_tilt"] == math.inf
    # Noise can imply f_tail < 0: clipped, f̄ recomputed from the buckets (0.5).
    c = influence_from_candidates([0.5, 0.3], [1.0, 0.5], 0.3)
    assert c["f_tail_clipped"] and c["f_tail"] == 0.0
    assert c["f_mean"] == pytest.approx(0.65) and c["f_mean_direct"] == 0.3
    # No success anywhere: Inf = 0 (defined), the normalised variant and the tilt are not.
    z = influence_from_candidates([0.6, 0.2], [0.0, 0.0], 0.0)
    assert z["influence"] == 0.0 and z["influence_normalised"] is None and z["kl_tilt"] is None
    # Candidates covering P_S need no f̄; otherwise the tail must be accounted for.
    full = influence_stats([0.5, 0.5], [1.0, 0.5])
    assert full["influence"] == pytest.approx(0.25) and full["tail_mass"] == 0.0
    assert full["kl_tilt"] == pytest.approx(0.5 * math.log(1.125))
    with pytest.raises(ValueError, match="give f_mean"):
        influence_from_candidates([0.5, 0.3], [1.0, 0.0])
    with pytest.raises(ValueError, match="sum to"):
        influence_from_candidates([0.7, 0.7], [1.0, 0.0], 0.5)


def test_tail_bucket_brackets_the_full_vocabulary_value():
    """With the exact f̄, the bucketed Inf is ≤ the full-vocabulary Inf ≤ ``influence_upper``,
    and the bucketed tilt KL ≤ the full one (data processing); Theorem 2 holds on the buckets."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        p = torch.distributions.Dirichlet(torch.full((30,), 0.3, dtype=torch.float64)).sample()
        f = torch.rand(30, generator=generator, dtype=torch.float64)
        top = p.argsort(descending=True)[:4]
        s = influence_from_candidates(p[top].tolist(), f[top].tolist(), float((p * f).sum()))
        full = float(influence(p, f))
        assert s["influence"] <= full + 1e-9 <= s["influence_upper"] + 2e-9
        assert s["kl_tilt"] <= float(kl_divergence(p, bayes_teacher(p, f))) + 1e-9
        assert s["influence"] ** 2 <= 2 * s["kl_tilt"] + 1e-12


def test_summary_counts_each_bound():
    def record(inf, upper, normalised, f_mean, kl_tilt, kl_context):
        return dict(
            influence=inf,
            influence_upper=upper,
            influence_normalised=normalised,
            f_mean=f_mean,
            kl_tilt=kl_tilt,
            kl_context=kl_context,
            tail_mass=0.1,
            f_tail_clipped=False,
        )

    records = [
        record(0.3, 0.5, 0.6, 0.5, 0.2, 0.1),  # context: 0.09 ≤ 0.2; upper 0.25 > 0.2
        record(0.1, 0.2, 0.4, 0.25, 0.01, 0.001),  # context: 0.01 > 0.002
        record(0.0, 0.0, None, 0.0, None, 0.2),  # no success: Inf = 0 holds
    ]
    summary = summarize_influence(records, continuations=4, candidates=2)
    assert summary["positions"] == 3 and summary["positions_with_success"] == 2
    assert summary["bound_holds_tilt"] == 1.0
    assert summary["bound_holds_context"] == pytest.approx(2 / 3)
    assert summary["bound_holds_context_upper"] == pytest.approx(1 / 3)
    # Normalised: 0.36 > 0.2, 0.16 > 0.002 → 0 of the 2 positions with success.
    assert summary["bound_holds_context_normalised"] == 0.0
    assert summary["tail_mass_mean"] == pytest.approx(0.1)
    assert summary["inf_definition"].startswith("Eq. 5")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # tie: avg ranks
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None
