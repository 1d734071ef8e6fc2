"""Figures: pass@k curves of one or more checkpoints (the paper's pass@k plots) and training-reward
curves of several methods (its Figure 5). matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pass_at_k(rows: Sequence[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """One panel per benchmark: pass@k (%) against k on a log2 axis, one line per checkpoint.

    ``rows``: (label, results.json content) pairs, e.g. this evaluation and its overlays.
    """
    plt = _pyplot()
    names: list[str] = []
    for _, results in rows:
        names += [b for b in results["benchmarks"] if b not in names]
    cols = min(3, len(names))
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for label, results in rows:
            row = results["benchmarks"].get(name)
            if row is None:
                continue
            ks = sorted(int(k) for k in row["pass@k"])
            ax.plot(ks, [row["pass@k"][str(k)] for k in ks], marker="o", ms=3, label=label)
        ax.set_xscale("log", base=2)
        ticks = sorted(
            {
                int(k)
                for _, r in rows
                if name in r["benchmarks"]
                for k in r["benchmarks"][name]["pass@k"]
            }
        )
        ax.set_xticks(ticks, [str(k) for k in ticks])  # 1, 2, 4, ... rather than 2^0, 2^1
        ax.minorticks_off()
        ax.set_title(name)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` points (fewer at the start); same length."""
    v = np.asarray(values, dtype=float)
    sums = np.cumsum(np.concatenate([[0.0], v]))
    ends = np.arange(1, len(v) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_reward_curves(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: Path,
    *,
    ylabel: str = "train reward",
    smooth: int = 1,
) -> Path:
    """Mean over seeds with a ±1 std band, one line per method.

    ``curves[method]`` is one reward series per seed (step 1, 2, …); series of unequal length
    are cut to the shortest so that every plotted point averages the same seeds. ``smooth`` > 1
    first replaces each seed's series by its trailing moving average over that many steps.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, series in curves.items():
        length = min(len(s) for s in series)
        if length == 0:
            continue
        values = np.asarray([moving_average(s[:length], smooth) for s in series])
        steps = np.arange(1, length + 1)
        mean, std = values.mean(axis=0), values.std(axis=0)
        ax.plot(steps, mean, label=f"{method} ({len(series)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("RL step")
    ax.set_ylabel(ylabel if smooth <= 1 else f"{ylabel} (moving average, {smooth} steps)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pass_at_k_stats(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> Path:
    """pass@k (%) against k on a log2 axis, one line per label with a ±1 std band.

    ``curves[label][str(k)]`` is ``{"mean": ..., "std": ...}`` over seeds (what `rlrt compare`
    writes as ``eval_pass@k``), e.g. each method after training and the warmed-up model.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ticks: set[int] = set()
    for label, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        mean = np.asarray([curve[str(k)]["mean"] for k in ks])
        std = np.asarray([curve[str(k)]["std"] for k in ks])
        style = {"color": "black", "linestyle": "--"} if label == "warmed-up model" else {}
        ax.plot(ks, mean, marker="o", ms=3, label=label, **style)
        ax.fill_between(
            ks, mean - std, mean + std, alpha=0.15, **({"color": "black"} if style else {})
        )
        ticks |= set(ks)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("k")
    ax.set_ylabel("held-out pass@k (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
