"""Explore / exploit markers (paper Figure 3, Table 2).

At every response position the student and teacher views give full distributions. The token the
student prefers most *relative to the teacher*, argmax_v D̂_t(v) with D̂_t(v) = log P_S(v) −
log P_T(v), goes to the explore corpus; argmin_v D̂_t(v) to the exploit corpus. Token types that
are over-represented in one corpus are scored with the smoothed log-odds z-score of Monroe, Colaresi
& Quinn (2008, "Fightin' Words"), informative Dirichlet prior replaced by a flat α.

As App. D: token types are case-folded before counting; candidates (|z| ≥ 3) are filtered to
ASCII-alphabetic types of 3–15 characters seen ≥ 30 times that are neither NLTK English
stopwords (198 words, shipped as package data) nor domain stopwords (this project's list of
~400 math content words: the paper's own list is not given in its text); the counts before and
after filtering are reported like the paper's "251/171 → 38/61" (:func:`candidate_counts`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch


def read_wordlist(name: str) -> frozenset[str]:
    """A word list shipped as package data (``rlrt_megatron/analysis/data/<name>``): one word a
    line, ``#`` comments and blank lines skipped, lowercased."""
    from importlib.resources import files

    text = files("rlrt_megatron.analysis").joinpath("data", name).read_text(encoding="utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


# App. D removes NLTK's English stopwords (198 words) and a domain list (~400 words). NLTK's
# list ships with this package (NLTK itself downloads it at run time); the paper's domain list is
# not reproduced in its text, so DOMAIN_STOPWORDS is this project's own list of math content
# words (see the file's header: no reasoning-behaviour words).
NLTK_ENGLISH_STOPWORDS = read_wordlist("nltk_english_stopwords.txt")
DOMAIN_STOPWORDS = read_wordlist("math_domain_stopwords.txt")
BASIC_STOPWORDS = NLTK_ENGLISH_STOPWORDS  # the former name of the English list
# LaTeX command names that dominate math text (all in DOMAIN_STOPWORDS).
MATH_STOPWORDS = frozenset(
    """frac boxed cdot times sqrt left right text mathrm quad dfrac tfrac begin end align equation
    pmatrix matrix""".split()
)


def default_stopwords(*, domain: bool = True) -> frozenset[str]:
    """App. D's stopwords: NLTK's English list plus (``domain``) the math domain list."""
    return NLTK_ENGLISH_STOPWORDS | (DOMAIN_STOPWORDS if domain else frozenset())


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


# The filter's stages, in the order they are applied (see `filter_stage`).
FILTER_STAGES = ("min_count", "alphabetic", "length", "stopword")


def filter_stage(
    token: str,
    count: int,
    *,
    min_count: int = 30,
    min_len: int = 3,
    max_len: int = 15,
    stopwords: frozenset[str] = frozenset(),
) -> str | None:
    """The first stage of the paper's filter (App. D) that ``token`` fails, or None when it
    passes: "min_count" (< ``min_count`` occurrences in both corpora), "alphabetic" (not ASCII
    letters only), "length" (outside ``min_len``–``max_len`` characters), "stopword" (in
    ``stopwords``, case-insensitively)."""
    if count < min_count:
        return "min_count"
    if not (token.isascii() and token.isalpha()):
        return "alphabetic"
    if not min_len <= len(token) <= max_len:
        return "length"
    if token.lower() in stopwords:
        return "stopword"
    return None


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
    stage = filter_stage(
        token, count, min_count=min_count, min_len=min_len, max_len=max_len, stopwords=stopwords
    )
    return stage is None


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
        stage = filter_stage(token, e + x, min_count=min_count, stopwords=stop)
        rows.append(
            dict(
                token=token,
                explore=e,
                exploit=x,
                delta=delta,
                z=score,
                kept=stage is None and abs(score) >= threshold,
                filtered=stage,
            )
        )
    return sorted(rows, key=lambda r: -r["z"])


def candidate_counts(rows: Sequence[dict], *, threshold: float = 3.0) -> dict[str, dict]:
    """App. D's bookkeeping ("251/171 → 38/61"): the candidate markers (|z| ≥ ``threshold``)
    on the explore (z > 0) and exploit (z < 0) side before the filter, how many remain after
    each filter stage (:data:`FILTER_STAGES`, in order), and after all of them (the kept
    markers). ``rows``: :func:`score_markers`' output."""
    candidates = [r for r in rows if abs(r["z"]) >= threshold and r["z"] != 0]

    def split(subset: Sequence[dict]) -> dict[str, int]:
        return {
            "explore": sum(r["z"] > 0 for r in subset),
            "exploit": sum(r["z"] < 0 for r in subset),
        }

    out = {"before_filter": split(candidates)}
    remaining = candidates
    for stage in FILTER_STAGES:
        remaining = [r for r in remaining if r["filtered"] != stage]
        out[f"after_{stage}"] = split(remaining)
    out["after_filter"] = split([r for r in rows if r["kept"]])
    return out


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


def count_pieces(pieces: Iterable[str], *, case_fold: bool = True) -> Counter:
    """Count decoded token pieces as token types: surrounding whitespace stripped and, with
    ``case_fold`` (App. D), lowercased, so " Wait", "Wait" and "wait" are one type."""
    stripped = (p.strip() for p in pieces)
    return Counter(p.lower() if case_fold else p for p in stripped if p)


def build_corpora(
    explore_ids: Iterable[Sequence[int]],
    exploit_ids: Iterable[Sequence[int]],
    decode: Callable[[int], str],
    *,
    case_fold: bool = True,
) -> tuple[Counter, Counter]:
    """The explore and exploit corpora as token-type counts.

    ``explore_ids`` / ``exploit_ids``: per rollout, the argmax_v / argmin_v of D̂_t(v) at each
    response position ([T] ids each, from the vocab-parallel pair pass); ``decode`` maps an id to
    its text piece. Pieces are counted with surrounding whitespace stripped (whitespace-only
    pieces are dropped) and, with ``case_fold`` (the paper's counts, App. D), lowercased: " Wait"
    and "wait" are one type.
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
        explore.update(count_pieces((piece(int(i)) for i in hi), case_fold=case_fold))
        exploit.update(count_pieces((piece(int(i)) for i in lo), case_fold=case_fold))
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
    # ("begin" is left out: in math text it is LaTeX's \begin, a domain stopword.)
    "planning": "first next then now step need goal start plan".split(),
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
    """The scored token types as CSV text (token, explore, exploit, delta, z, kept, filtered: the
    filter stage a type failed, empty when it passed)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(
        out,
        fieldnames=["token", "explore", "exploit", "delta", "z", "kept", "filtered"],
        lineterminator="\n",
    )
    writer.writeheader()
    for r in rows:
        row = {k: r[k] for k in ("token", "explore", "exploit", "delta", "z", "kept")}
        writer.writerow(row | {"filtered": r.get("filtered") or ""})
    return out.getvalue()
