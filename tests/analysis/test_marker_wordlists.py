"""App. D's marker filtering: NLTK's 198 English stopwords and the domain list shipped as package
data, case-folded counts, and the candidate counts before/after filtering."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

import pytest

import rlrt_megatron.analysis
from rlrt_megatron.analysis.markers import (
    BASIC_STOPWORDS,
    DEFAULT_CATEGORIES,
    DOMAIN_STOPWORDS,
    MATH_STOPWORDS,
    NLTK_ENGLISH_STOPWORDS,
    build_corpora,
    candidate_counts,
    default_stopwords,
    score_markers,
)

DATA = Path(rlrt_megatron.analysis.__file__).parent / "data"


def _lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_nltk_english_stopwords_are_the_198_words():
    words = _lines("nltk_english_stopwords.txt")
    assert len(words) == 198 and len(set(words)) == 198  # App. D: "198 words"
    assert frozenset(words) == NLTK_ENGLISH_STOPWORDS == BASIC_STOPWORDS
    assert all(w == w.lower() == w.strip() for w in words)
    # The 19 contractions that took NLTK's list from 179 to 198 words.
    added = "he'd he'll he's i'd i'll i'm i've it'd it'll she'd she'll they'd they'll they're "
    added += "they've we'd we'll we're we've"
    assert set(added.split()) <= NLTK_ENGLISH_STOPWORDS and len(added.split()) == 19
    for word in ("a", "ain", "mightn't", "should've", "y", "yourselves", "that'll", "whom"):
        assert word in NLTK_ENGLISH_STOPWORDS


def test_domain_list():
    words = _lines("math_domain_stopwords.txt")
    assert len(words) == len(set(words)) == len(DOMAIN_STOPWORDS)
    assert 350 <= len(words) <= 450  # App. D: "about 400"
    assert all(w.isascii() and w.isalpha() and w == w.lower() for w in words)
    assert MATH_STOPWORDS <= DOMAIN_STOPWORDS
    assert not DOMAIN_STOPWORDS & NLTK_ENGLISH_STOPWORDS
    # Content words only: no word of the behaviour categories (Table 2) is filtered away.
    behaviour = {w.lower() for ws in DEFAULT_CATEGORIES.values() for w in ws}
    assert not DOMAIN_STOPWORDS & behaviour
    assert default_stopwords() == NLTK_ENGLISH_STOPWORDS | DOMAIN_STOPWORDS
    assert default_stopwords(domain=False) == NLTK_ENGLISH_STOPWORDS


def test_pyproject_ships_the_word_lists():
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["rlrt_megatron.analysis"]
    package = root / "rlrt_megatron" / "analysis"
    shipped = {
        p.relative_to(package).as_posix() for pattern in patterns for p in package.glob(pattern)
    }
    assert {"data/nltk_english_stopwords.txt", "data/math_domain_stopwords.txt"} <= shipped


def test_counts_are_case_folded():
    pieces = {1: " Wait", 2: "wait", 3: "WAIT", 4: " So", 5: "  "}
    explore, exploit = build_corpora([[1, 2, 3]], [[4, 5, 4]], pieces.__getitem__)
    assert explore == Counter({"wait": 3}) and exploit == Counter({"so": 2})
    explore, _ = build_corpora([[1, 2, 3]], [[4, 5, 4]], pieces.__getitem__, case_fold=False)
    assert explore == Counter({"Wait": 1, "wait": 1, "WAIT": 1})


def test_candidate_counts_before_and_after_filtering():
    # E = 430 explore tokens, X = 1300 exploit tokens. One-sided types with 100 occurrences are
    # far past |z| = 3. "oops" (25, explore only): δ = ln(25.5/405.5) − ln(0.5/1300.5) = 5.0971,
    # Var = 1/25.5 + 1/0.5 → z = 3.5694, a candidate the min-count filter (30) drops. "hmm" (5):
    # δ = ln(5.5/425.5) − ln(0.5/1300.5) = 3.5151, Var = 1/5.5 + 2 → z = 2.3797, no candidate.
    explore = {"wait": 100, "the": 100, "x2y": 100, "ab": 100, "hmm": 5, "oops": 25}
    exploit = {"therefore": 100, "frac": 100, "because": 100, "filler": 1000}
    rows = score_markers(explore, exploit)
    z = {r["token"]: r["z"] for r in rows}
    assert z["oops"] == pytest.approx(3.5694, abs=1e-3)
    assert z["hmm"] == pytest.approx(2.3797, abs=1e-3)
    counts = candidate_counts(rows)
    # Explore candidates: wait, the, x2y, ab, oops; exploit: therefore, frac, because, filler.
    assert counts["before_filter"] == {"explore": 5, "exploit": 4}
    assert counts["after_min_count"] == {"explore": 4, "exploit": 4}  # − oops
    assert counts["after_alphabetic"] == {"explore": 3, "exploit": 4}  # − x2y
    assert counts["after_length"] == {"explore": 2, "exploit": 4}  # − ab
    # − the (NLTK), − frac (domain), − because (NLTK)
    assert counts["after_stopword"] == {"explore": 1, "exploit": 2}
    assert counts["after_filter"] == {"explore": 1, "exploit": 2}  # wait | therefore, filler
    assert {r["token"] for r in rows if r["kept"]} == {"wait", "therefore", "filler"}
