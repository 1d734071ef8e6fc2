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
from collections.abc import Callable, Iterable, Mapping, Sequence

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
    return {token: z for token, (_, z) in _log_odds(explore_counts, exploit_counts, alpha).items()}


def _log_odds(
    explore_counts: Mapping[str, int], exploit_counts: Mapping[str, int], alpha: float
) -> dict[str, tuple[float, float]]:
    """{token: (δ_v, z_v)} of :func:`log_odds_z` (inputs already checked)."""
    total_e = sum(explore_counts.values())
    total_x = sum(exploit_counts.values())
    scores = {}
    for token in set(explore_counts) | set(exploit_counts):
        e = explore_counts.get(token, 0)
        x = exploit_counts.get(token, 0)
        delta = math.log((e + alpha) / (total_e - e + alpha)) - math.log(
            (x + alpha) / (total_x - x + alpha)
        )
        scores[token] = (delta, delta / math.sqrt(1.0 / (e + alpha) + 1.0 / (x + alpha)))
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
    """All token types with their counts, δ and z, marked ``kept`` when they pass the filter and
    |z| ≥ ``threshold``; sorted by z (explore markers first)."""
    stop = default_stopwords() if stopwords is None else stopwords
    log_odds_z(explore_counts, exploit_counts, alpha)  # validates the inputs
    rows = []
    for token, (delta, score) in _log_odds(explore_counts, exploit_counts, alpha).items():
        e, x = explore_counts.get(token, 0), exploit_counts.get(token, 0)
        passes = keep_marker(token, e + x, min_count=min_count, stopwords=stop)
        rows.append(
            dict(
                token=token,
                explore=e,
                exploit=x,
                delta=delta,
                z=score,
                kept=passes and abs(score) >= threshold,
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


def build_corpora(
    explore_ids: Iterable[Sequence[int]],
    exploit_ids: Iterable[Sequence[int]],
    decode: Callable[[int], str],
) -> tuple[Counter, Counter]:
    """The explore and exploit corpora as token-type counts.

    ``explore_ids`` / ``exploit_ids``: per rollout, the argmax_v / argmin_v of D̂_t(v) at each
    response position ([T] ids each, from the vocab-parallel pair pass); ``decode`` maps an id to
    its text piece. Pieces are counted with surrounding whitespace stripped (whitespace-only
    pieces are dropped), so " Wait" and "Wait" are one type.
    """
    explore: Counter = Counter()
    exploit: Counter = Counter()
    cache: dict[int, str] = {}

    def piece(i: int) -> str:
        if i not in cache:
            cache[i] = decode(i)
        return cache[i]

    for hi, lo in zip(explore_ids, exploit_ids, strict=True):
        if len(hi) != len(lo):
            raise ValueError(f"explore/exploit ids differ in length: {len(hi)} vs {len(lo)}")
        explore.update(count_pieces(piece(int(i)) for i in hi))
        exploit.update(count_pieces(piece(int(i)) for i in lo))
    return explore, exploit


def one_correct_one_incorrect(problems: Sequence[str], correct: Sequence[bool]) -> list[int]:
    """Indices kept for the marker corpora, as in the paper: per problem that has both, its
    first correct and its first incorrect rollout (balanced: success itself does not bias the
    corpora). Problems with only correct or only incorrect rollouts are left out."""
    if len(problems) != len(correct):
        raise ValueError(f"{len(problems)} problems but {len(correct)} correctness flags")
    first: dict[tuple[str, bool], int] = {}
    for i, (p, c) in enumerate(zip(problems, correct, strict=True)):
        first.setdefault((p, bool(c)), i)
    return sorted(i for (p, c), i in first.items() if (p, not c) in first)


# Categories of the Table-2-style summary (case-insensitive words); replace with --categories.
DEFAULT_CATEGORIES: dict[str, list[str]] = {
    "reflection": "wait hmm actually however but mistake wrong oops reconsider recheck".split(),
    "verification": "check verify confirm double sanity test indeed correct".split(),
    "alternatives": "alternatively perhaps maybe might suppose consider instead another try "
    "whether".split(),
    "planning": "first next then now step need goal start begin plan".split(),
    "conclusion": "therefore thus hence finally answer conclude so".split(),
    "computation": "compute calculate substitute simplify multiply add subtract divide solve "
    "equals plug".split(),
}


def markers_table(rows: Sequence[dict], categories: Mapping[str, Sequence[str]]) -> str:
    """Markdown table of the kept markers grouped by category (paper Table 2): one row per
    category, explore markers (z > 0) and exploit markers (z < 0) with their z-scores; markers
    in no category go to "other"."""
    lookup = {w.lower(): name for name, words in categories.items() for w in words}
    groups: dict[str, dict[str, list[str]]] = {name: {"+": [], "-": []} for name in categories}
    groups["other"] = {"+": [], "-": []}
    for row in rows:
        if not row["kept"]:
            continue
        name = lookup.get(row["token"].lower(), "other")
        groups[name]["+" if row["z"] > 0 else "-"].append(f"{row['token']} ({row['z']:+.1f})")
    lines = ["| category | explore markers (z) | exploit markers (z) |", "|---|---|---|"]
    for name, sides in groups.items():
        if sides["+"] or sides["-"]:
            explore = ", ".join(sides["+"]) or "—"
            exploit = ", ".join(sides["-"][::-1]) or "—"
            lines.append(f"| {name} | {explore} | {exploit} |")
    if len(lines) == 2:
        lines.append("| (no token passed the filters) | — | — |")
    return "\n".join(lines) + "\n"


def volcano_plot(rows: Sequence[dict], *, threshold: float = 3.0, label: int = 12):
    """Figure 3a: log-odds δ (x) against |z| (y) of every scored token type; kept explore markers
    red, kept exploit markers blue, the rest grey; the ``label`` most extreme kept ones named,
    and the six most extreme filtered-out types (quoted, grey).
    Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    # Grey first, so the kept markers are drawn on top of unkept types at the same point.
    for group, color in (
        ([r for r in rows if not r["kept"]], "0.75"),
        ([r for r in rows if r["kept"] and r["z"] < 0], "tab:blue"),
        ([r for r in rows if r["kept"] and r["z"] > 0], "tab:red"),
    ):
        ax.scatter([r["delta"] for r in group], [abs(r["z"]) for r in group], s=10, c=color)
    ax.axhline(threshold, color="0.4", ls="--", lw=0.8)
    kept = sorted((r for r in rows if r["kept"]), key=lambda r: -abs(r["z"]))[:label]
    # The most extreme filtered-out types too (grey, quoted): what dominates the corpora.
    dropped = sorted((r for r in rows if not r["kept"]), key=lambda r: -abs(r["z"]))[:6]
    for r, color, text in [(r, "black", r["token"]) for r in kept] + [
        (r, "0.45", repr(r["token"])) for r in dropped
    ]:
        ax.annotate(
            text,
            (r["delta"], abs(r["z"])),
            fontsize=8,
            color=color,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("log-odds δ (explore − exploit)")
    ax.set_ylabel("|z| (smoothed log-odds z-score)")
    ax.set_title(f"explore (red) / exploit (blue) markers, |z| ≥ {threshold:g}")
    fig.tight_layout()
    return fig


def write_csv(rows: Sequence[dict]) -> str:
    """The scored token types as CSV text (token, explore, exploit, delta, z, kept)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=["token", "explore", "exploit", "delta", "z", "kept"], lineterminator="\n"
    )
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in writer.fieldnames})
    return out.getvalue()
