"""D̄_t heatmaps of trajectories (paper Figures 2, 10, 12, 13).

Each response token is shaded by D̄_t = KL(P_S^t ‖ P_T^t). At the ``top`` most critical
positions (largest D̄_t) a panel lists the four candidates the student prefers most relative to
the teacher (largest P_S − P_T: *explore*) and the four the teacher prefers (largest P_T − P_S:
*exploit*), taken from the union of both views' top-k (k = 100 by default).

Outputs: one self-contained HTML page (no scripts, no external resources; every token piece is
HTML-escaped, each token carries its exact D̄_t in ``data-kl``), and one PNG per trajectory with
the full shaded response, a zoom around the most critical position and the candidate panels.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    token_id: int
    piece: str
    p_student: float
    p_teacher: float

    @property
    def gap(self) -> float:
        """P_S − P_T (> 0: the student prefers it more than the teacher)."""
        return self.p_student - self.p_teacher


@dataclass(frozen=True)
class CriticalPosition:
    position: int
    kl: float
    explore: list[Candidate]
    exploit: list[Candidate]


@dataclass(frozen=True)
class TrajectoryHeatmap:
    """What is drawn for one trajectory: pieces [T], D̄_t [T] and the critical positions."""

    title: str
    pieces: list[str]
    kl: list[float]
    critical: list[CriticalPosition] = field(default_factory=list)


def rank_candidates(
    ids: Sequence[int],
    student_log_prob: Sequence[float],
    teacher_log_prob: Sequence[float],
    decode,
    *,
    n: int = 4,
) -> tuple[list[Candidate], list[Candidate]]:
    """The union of the candidate ids (duplicates dropped), ranked by P_S − P_T: the ``n``
    largest (explore, descending) and the ``n`` smallest (exploit, most negative first)."""
    seen: dict[int, Candidate] = {}
    for i, s, t in zip(ids, student_log_prob, teacher_log_prob, strict=True):
        if int(i) not in seen:
            seen[int(i)] = Candidate(int(i), decode(int(i)), math.exp(s), math.exp(t))
    ranked = sorted(seen.values(), key=lambda c: (-c.gap, c.token_id))
    explore = [c for c in ranked[:n] if c.gap > 0]
    exploit = [c for c in reversed(ranked[-n:]) if c.gap < 0]
    return explore, exploit


def build_heatmap(
    title: str, token_ids: Sequence[int], views: dict[str, list], decode, *, top: int = 5
) -> TrajectoryHeatmap:
    """A :class:`TrajectoryHeatmap` from one trajectory's pair views (with candidates)."""
    kl = [float(v) for v in views["kl"]]
    order = sorted(range(len(kl)), key=lambda t: (-kl[t], t))[: max(top, 0)]
    critical = []
    for t in sorted(order):
        explore, exploit = rank_candidates(
            views["cand_ids"][t],
            views["cand_student_log_prob"][t],
            views["cand_teacher_log_prob"][t],
            decode,
        )
        critical.append(CriticalPosition(t, kl[t], explore, exploit))
    return TrajectoryHeatmap(title, [decode(int(i)) for i in token_ids], kl, critical)


def _shade(value: float, vmax: float) -> str:
    """White → red background for D̄_t in [0, vmax]."""
    x = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0)
    g = int(round(255 * (1 - 0.85 * x)))
    return f"rgb(255,{g},{g})"


def printable(piece: str, *, pictures: bool = True) -> str:
    """A token piece as readable text: newlines as ⏎ (kept as line breaks in HTML), other control
    characters (which HTML and XML forbid or hide) as their Unicode control pictures (␋ for a
    vertical tab, ...), or with ``pictures=False`` as escapes (``\\x0b``: plot fonts lack the
    pictures)."""
    out = []
    for ch in piece:
        code = ord(ch)
        if ch == "\n":
            out.append("⏎\n")
        elif ch != "\t" and (code < 0x20 or 0x7F <= code < 0xA0):
            if not pictures:
                out.append(f"\\x{code:02x}")
            elif code < 0x20:
                out.append(chr(0x2400 + code))
            else:
                out.append("␡" if code == 0x7F else "�")
        else:
            out.append(ch)
    return "".join(out)


def _piece_html(piece: str) -> str:
    return html.escape(printable(piece), quote=True)


def _tokens_html(heat: TrajectoryHeatmap, vmax: float, start: int, end: int) -> str:
    critical = {c.position for c in heat.critical}
    spans = []
    for t in range(start, end):
        value = heat.kl[t]
        cls = "tok crit" if t in critical else "tok"
        spans.append(
            f'<span class="{cls}" data-pos="{t}" data-kl="{value!r}" '
            f'title="t={t} D={value:.4g}" style="background:{_shade(value, vmax)}">'
            f"{_piece_html(heat.pieces[t])}</span>"
        )
    return "".join(spans)


def _candidates_html(rows: list[Candidate], label: str) -> str:
    cells = "".join(
        f"<tr><td><code>{_piece_html(c.piece)}</code></td><td>{c.p_student:.4f}</td>"
        f"<td>{c.p_teacher:.4f}</td><td>{c.gap:+.4f}</td></tr>"
        for c in rows
    )
    return (
        f"<table><caption>{html.escape(label)}</caption><thead><tr><th>token</th><th>P_S</th>"
        f"<th>P_T</th><th>P_S−P_T</th></tr></thead><tbody>{cells}</tbody></table>"
    )


_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:70em}
.resp{font-family:monospace;white-space:pre-wrap;line-height:1.7;border:1px solid #ccc;padding:.5em}
.tok{border-radius:2px}.crit{outline:2px solid #333}
.panel{display:flex;gap:2em;margin:.5em 0 1.5em 0}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}
caption{font-weight:bold;text-align:left}"""


def render_html(heatmaps: Sequence[TrajectoryHeatmap], *, window: int = 12) -> str:
    """The self-contained page: per trajectory the full shaded response, then per critical
    position a zoomed view (``window`` tokens each side) and its explore/exploit panels."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/><title>D̄_t heatmap</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>D̄<sub>t</sub> = KL(P<sub>S</sub>‖P<sub>T</sub>) per response token</h1>",
        "<p>Darker red: larger D̄<sub>t</sub> (scaled per trajectory). Outlined: the critical "
        "positions. Hover a token for its value.</p>",
    ]
    for index, heat in enumerate(heatmaps):
        vmax = max(heat.kl, default=0.0)
        parts.append(f'<section id="traj{index}"><h2>{html.escape(heat.title)}</h2>')
        parts.append(f"<p>max D̄<sub>t</sub> = {vmax:.4g}, {len(heat.kl)} tokens</p>")
        parts.append(f'<div class="resp">{_tokens_html(heat, vmax, 0, len(heat.kl))}</div>')
        for c in heat.critical:
            lo, hi = max(0, c.position - window), min(len(heat.kl), c.position + window + 1)
            parts.append(f"<h3>position {c.position}: D̄<sub>t</sub> = {c.kl:.4g}</h3>")
            parts.append(f'<div class="resp">{_tokens_html(heat, vmax, lo, hi)}</div>')
            parts.append(
                '<div class="panel">'
                + _candidates_html(c.explore, "explore: largest P_S − P_T")
                + _candidates_html(c.exploit, "exploit: largest P_T − P_S")
                + "</div>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _draw_tokens(ax, pieces, values, vmax, *, width_chars: int, marks=()) -> None:
    """Lay tokens out left to right in rows of ``width_chars`` characters, each on a box
    coloured by its value (matplotlib's Reds)."""
    import matplotlib

    cmap = matplotlib.colormaps["Reds"]
    x, y, rows = 0, 0, []
    for i, piece in enumerate(pieces):
        shown = printable(piece, pictures=False).replace("\n", "") or "∅"
        if x and x + len(shown) > width_chars:
            x, y = 0, y + 1
        rows.append((x, y, shown, values[i], i in marks))
        x += len(shown)
        if piece.endswith("\n"):
            x, y = 0, y + 1
    n_rows = y + 1
    # A monospace character is ~0.6 em wide: pick the font size that fills one character cell.
    cell_pt = ax.get_position().width * ax.figure.get_figwidth() * 72 / width_chars
    fontsize = max(4.0, min(14.0, cell_pt / 0.62))
    ax.set_xlim(0, width_chars)
    ax.set_ylim(n_rows, 0)
    ax.axis("off")
    for x, y, shown, value, marked in rows:
        level = 0.0 if vmax <= 0 else min(value / vmax, 1.0)
        ax.add_patch(
            matplotlib.patches.Rectangle(
                (x, y + 0.1),
                len(shown),
                0.8,
                color=cmap(0.05 + 0.8 * level),
                ec="black" if marked else "none",
                lw=1.2 if marked else 0,
            )
        )
        ax.text(x, y + 0.5, shown, va="center", ha="left", family="monospace", fontsize=fontsize)


def render_png(heat: TrajectoryHeatmap, *, width_chars: int = 120, window: int = 12):
    """A figure: the full shaded response, the zoom around the most critical position, and
    bar panels of its explore/exploit candidates. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = max(heat.kl, default=0.0)
    chars = sum(len(p) for p in heat.pieces) + heat.pieces.count("\n") * width_chars
    full_rows = max(1, chars // width_chars + 1)
    fig = plt.figure(figsize=(12, 2.2 + 0.28 * full_rows + 2.6), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[0.28 * full_rows + 0.6, 1.0, 1.6])
    ax = fig.add_subplot(grid[0, :])
    marks = {c.position for c in heat.critical}
    _draw_tokens(ax, heat.pieces, heat.kl, vmax, width_chars=width_chars, marks=marks)
    ax.set_title(f"{heat.title}: D̄_t per token (max {vmax:.3g}; boxed: critical)", fontsize=10)
    if heat.critical:
        peak = max(heat.critical, key=lambda c: c.kl)
        lo, hi = max(0, peak.position - window), min(len(heat.kl), peak.position + window + 1)
        zoom = fig.add_subplot(grid[1, :])
        _draw_tokens(
            zoom,
            heat.pieces[lo:hi],
            heat.kl[lo:hi],
            vmax,
            width_chars=width_chars // 2,
            marks={peak.position - lo},
        )
        zoom.set_title(f"zoom: position {peak.position} (D̄_t = {peak.kl:.3g})", fontsize=10)
        for col, (rows, label, color) in enumerate(
            (
                (peak.explore, "explore: P_S − P_T", "tab:red"),
                (peak.exploit, "exploit: P_T − P_S", "tab:blue"),
            )
        ):
            bar = fig.add_subplot(grid[2, col])
            names = [repr(printable(c.piece, pictures=False)) for c in rows][::-1]
            gaps = [abs(c.gap) for c in rows][::-1]
            bar.barh(range(len(rows)), gaps, color=color)
            bar.set_yticks(range(len(rows)), names, fontsize=8)
            bar.set_title(label, fontsize=9)
    return fig
