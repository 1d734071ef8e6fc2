"""Explore / exploit markers (paper Figure 3, Table 2).

At every response position the student and teacher views give full distributions. The token the
student prefers most *relative to the teacher*, argmax_v D̂_t(v) with D̂_t(v) = log P_S(v) −
log P_T(v), goes to the explore corpus; argmin_v D̂_t(v) to the exploit corpus. Token types that
are over-represented in one corpus are scored with the smoothed log-odds z-score of Monroe, Colaresi
& Quinn (2008, "Fightin' Words"), informative Dirichlet prior replaced by a flat α.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

import torch

# A short, documented English list (function words that carry no reasoning behaviour), used when
# NLTK's list is not installed; a domain list for math text is added to either.
BASIC_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me
    more most my myself no nor not now of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves""".split()
)
MATH_STOPWORDS = frozenset(
    """frac boxed cdot times sqrt left right text mathrm quad dfrac tfrac begin end align equation
    pmatrix matrix""".split()
)


def default_stopwords() -> frozenset[str]:
    """NLTK's English stopword list if NLTK and its corpus are installed, else `BASIC_STOPWORDS`;
    plus `MATH_STOPWORDS` (LaTeX command names that dominate math text)."""
    try:
        from nltk.corpus import stopwords  # optional dependency

        words = frozenset(stopwords.words("english"))
    except (ImportError, LookupError):
        words = BASIC_STOPWORDS
    return words | MATH_STOPWORDS


def log_odds_z(
    explore_counts: Mapping[str, int], exploit_counts: Mapping[str, int], alpha: float = 0.5
) -> dict[str, float]:
    """Smoothed log-odds z-score of every token type present in either corpus.

        δ_v = log((e_v + α) / (E − e_v + α)) − log((x_v + α) / (X − x_v + α))
        Var(δ_v) ≈ 1/(e_v + α) + 1/(x_v + α),      z_v = δ_v / √Var(δ_v)

    e_v, x_v: counts of v in the explore and exploit corpora; E, X: the corpora's total counts.
    z > 0: an explore marker (chosen by the student against the teacher); z < 0: exploit.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    for name, counts in (("explore_counts", explore_counts), ("exploit_counts", exploit_counts)):
        bad = [k for k, c in counts.items() if c < 0 or int(c) != c]
        if bad:
            raise ValueError(f"{name} must hold non-negative integer counts; bad: {bad[:5]}")
    total_e = sum(explore_counts.values())
    total_x = sum(exploit_counts.values())
    scores = {}
    for token in set(explore_counts) | set(exploit_counts):
        e = explore_counts.get(token, 0)
        x = exploit_counts.get(token, 0)
        delta = math.log((e + alpha) / (total_e - e + alpha)) - math.log(
            (x + alpha) / (total_x - x + alpha)
        )
        scores[token] = delta / math.sqrt(1.0 / (e + alpha) + 1.0 / (x + alpha))
    return scores


def keep_marker(
    token: str,
    count: int,
    *,
    min_count: int = 30,
    min_len: int = 3,
    max_len: int = 15,
    stopwords: frozenset[str] = frozenset(),
) -> bool:
    """The paper's filter: ≥ ``min_count`` occurrences (both corpora), ASCII alphabetic,
    ``min_len``–``max_len`` characters, not a stopword (case-insensitive)."""
    return (
        count >= min_count
        and token.isascii()
        and token.isalpha()
        and min_len <= len(token) <= max_len
        and token.lower() not in stopwords
    )


def score_markers(
    explore_counts: Mapping[str, int],
    exploit_counts: Mapping[str, int],
    *,
    alpha: float = 0.5,
    threshold: float = 3.0,
    min_count: int = 30,
    stopwords: frozenset[str] | None = None,
) -> list[dict]:
    """All token types with their counts and z, marked ``kept`` when they pass the filter and
    |z| ≥ ``threshold``; sorted by z (explore markers first)."""
    stop = default_stopwords() if stopwords is None else stopwords
    z = log_odds_z(explore_counts, exploit_counts, alpha)
    rows = []
    for token, score in z.items():
        e, x = explore_counts.get(token, 0), exploit_counts.get(token, 0)
        passes = keep_marker(token, e + x, min_count=min_count, stopwords=stop)
        rows.append(
            dict(
                token=token, explore=e, exploit=x, z=score, kept=passes and abs(score) >= threshold
            )
        )
    return sorted(rows, key=lambda r: -r["z"])


def explore_exploit_ids(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax_v and argmin_v of D̂_t(v) = log P_S(v) − log P_T(v) at every position.

    Shapes: [T, V] full log-probs → ([T], [T]). The single-process reference of the chunked,
    vocab-parallel computation the actor runs on real vocabularies.
    """
    if student_logprobs.shape != teacher_logprobs.shape:
        raise ValueError(
            f"student and teacher log-probs differ in shape: {tuple(student_logprobs.shape)} vs "
            f"{tuple(teacher_logprobs.shape)}"
        )
    gap = student_logprobs - teacher_logprobs
    return gap.argmax(dim=-1), gap.argmin(dim=-1)


def count_pieces(pieces: Iterable[str]) -> Counter:
    """Count decoded token pieces as token types (surrounding whitespace stripped)."""
    return Counter(p.strip() for p in pieces if p.strip())
