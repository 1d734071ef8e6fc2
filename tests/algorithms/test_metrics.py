import itertools
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrt_megatron.algorithms.metrics import (
    avg_at_k,
    default_ks,
    mean_pass_at_k,
    pass_at_k,
    results_row,
)


def test_hand_computed():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2) = 1 − 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong samples: every k-subset has a hit
    assert pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 9), data=st.data())
def test_matches_brute_force_enumeration(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    brute = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("c, k", [(1, 1), (3, 256), (100, 16), (512, 512), (900, 64), (20, 1000)])
def test_stable_at_n_1024_against_exact_rationals(c, k):
    n = 1024
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "n, c, k, match",
    [
        (0, 0, 1, "n must be >= 1"),
        (4, 5, 1, "c must be in"),
        (4, 1, 5, "k must be in"),
        (4, 1, 0, "k must be in"),
        (4, 1.5, 1, "c must be an integer"),
    ],
)
def test_bad_input(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_results_row_in_percent():
    correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    row = results_row(correct)
    assert row["n"] == 4
    assert row["avg@n"] == pytest.approx(100 * 5 / 12)
    assert row["pass@n"] == pytest.approx(100 * 2 / 3)
    assert list(row["pass@k"]) == [1, 2, 4]
    assert row["pass@k"][1] == pytest.approx(row["avg@n"])
    assert row["pass@k"][2] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert avg_at_k(correct) == pytest.approx(5 / 12)
    assert mean_pass_at_k(correct, 4) == pytest.approx(2 / 3)
    assert default_ks(16) == [1, 2, 4, 8, 16] and default_ks(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError, match="correct must be"):
        results_row(np.zeros(4, dtype=bool))
