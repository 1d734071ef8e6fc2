"""The miniature comparison's report (README "Results in miniature"; issue 18).

Reads the finished runs of ``scripts/miniature.sh`` — the method comparison in ``OUTPUT`` and the
ε_w sweep in ``OUTPUT_eps_w<value>`` — rewrites each comparison's table and figures
(`rlrt_megatron.trainer.compare.write_comparison`), copies the figures to ``--figures`` and
writes ``OUTPUT/report.md`` and ``report.json``: the tables, the collapse check and a verdict per
claim of the paper, all computed from the runs' files.

Rules (stated in the report too):
- **difference vs seed spread**: two methods differ on a metric only when the difference of their
  means exceeds the larger of their two seed standard deviations; otherwise "no difference".
- **collapse**: a method collapses when its train reward, smoothed over ``--window`` steps and
  averaged over seeds, falls below half of its first window's value; the step is the first
  where that happens. Entropy is reported beside it (first and last window means).

Usage:  python scripts/miniature_report.py --output runs/miniature
            [--figures docs/figures/miniature]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rlrt_megatron.trainer.compare import (
    CURVES_PNG,
    ENTROPY_PNG,
    PASS_AT_K_PNG,
    TABLE_MD,
    collapse_step,
    compare_outcome,
    reward_curves,
    write_comparison,
)

METHODS = ("grpo", "rlrt", "rlrt_all", "rlsd")
SWEEP = ("0.2", "0.5")  # ε_w values run beside the main comparison's 1.0
KS = ("1", "8", "64")


def seeds_of(output: Path, method: str) -> int:
    """How many consecutive seed folders of ``method`` hold a summary (0, 1, ... without gaps)."""
    n = 0
    while (output / method / f"seed{n}" / "summary.json").is_file():
        n += 1
    return n


def _finite(series: list[list[Any]]) -> list[float]:
    """The finite values of per-seed metric series (metrics.jsonl writes NaN as a string)."""
    values = [float(x) for s in series for x in s]
    return [x for x in values if np.isfinite(x)]


def teacher_signal(out: Path, methods: list[str], seeds: int) -> tuple[list[str], dict[str, Any]]:
    """How far the teacher view is from the student's, and how much of the reweighted tokens sit
    above weight 1 (at D_t >> 0 nearly all of them sit at the clip bound): table lines + data."""
    lines = [
        "| Method | teacher KL(P_S‖P_T) per token | mean D_t on correct rollouts |"
        " reweighted tokens with weight > 1 |",
        "|---|:---:|:---:|:---:|",
    ]
    data: dict[str, Any] = {}
    for m in methods:
        kl = reward_curves(out, [m], seeds, "teacher/kl_mean")[m]
        if not any(kl):
            continue
        d = reward_curves(out, [m], seeds, "reweight/mean_log_ratio_correct")[m]
        gt1 = reward_curves(out, [m], seeds, "reweight/weight_gt1_frac")[m]
        tokens = reward_curves(out, [m], seeds, "update/pg_tokens")[m]
        used = reward_curves(out, [m], seeds, "reweight/reweighted_tokens")[m]
        share = [
            float(g) * float(t) / float(u)
            for gs, ts, us in zip(gt1, tokens, used, strict=True)
            for g, t, u in zip(gs, ts, us, strict=True)
            if float(u) > 0
        ]
        d_values = _finite(d)
        row = {
            "teacher_kl": float(np.mean(_finite(kl))),
            "mean_d_correct": float(np.mean(d_values)) if d_values else None,
            "weight_gt1_share": float(np.mean(share)) if share else None,
        }
        data[m] = row
        d_text = f"{row['mean_d_correct']:.2f}" if row["mean_d_correct"] is not None else "–"
        share_text = f"{100 * row['weight_gt1_share']:.0f}%" if share else "–"
        lines.append(f"| {m} | {row['teacher_kl']:.2f} | {d_text} | {share_text} |")
    return lines + [""], data


def rlrt_vs_grpo(rows: dict[str, Any], label: str = "") -> tuple[list[str], dict[str, Any]]:
    """Verdict lines on RLRT vs GRPO over the held-out pass@k curve (the paper's Table 1/3 and
    Figure 8 claims) + the outcomes per k."""
    outcomes = {
        k: compare_outcome(rows["rlrt"]["eval_pass@k"][k], rows["grpo"]["eval_pass@k"][k])
        for k in rows["rlrt"]["eval_pass@k"]
    }
    shown = ", ".join(
        f"pass@{k} {o[0]} ({o[1]:+.1f} vs spread {o[2]:.1f})"
        for k, o in outcomes.items()
        if k in KS
    )
    all_k = {o[0] for o in outcomes.values()}
    lines = [
        f"RLRT vs GRPO{label}, held-out: {shown}.",
        f"RLRT dominates GRPO{label} from pass@1 to pass@64: "
        + ("yes" if all_k == {"higher"} else f"no (outcomes over k: {sorted(all_k)})")
        + ".",
    ]
    return lines, {k: list(o) for k, o in outcomes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/miniature")
    parser.add_argument("--figures", default="docs/figures/miniature")
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    out, figures = Path(args.output), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)

    methods = [m for m in METHODS if seeds_of(out, m)]
    seeds = min(seeds_of(out, m) for m in methods)
    write_comparison(out, methods, seeds)
    table = json.loads((out / "compare.json").read_text())
    for name in (CURVES_PNG, ENTROPY_PNG, PASS_AT_K_PNG):
        if (out / name).exists():
            shutil.copyfile(out / name, figures / name)
    report: dict[str, Any] = {"methods": methods, "seeds": seeds, "table": table}
    lines = []
    feasibility = {
        name: json.loads(path.read_text())
        for name, path in (
            ("countdown.yaml", out / "feasibility.json"),
            ("countdown_teacher_view.yaml", Path(f"{out}_teacher_view") / "feasibility.json"),
        )
        if path.is_file()
    }
    if feasibility:
        lines += [
            "### The warmed-up models (benchmarks/miniature_feasibility.py, HF sampling)",
            "",
            "| Warm-up | pass@1 | pass@8 | pass@64 | uniform guess pass@1 / @64 | well-formed |"
            " reads a solution in the teacher's view |",
            "|---|:---:|:---:|:---:|:---:|:---:|:---:|",
        ]
        for name, f in feasibility.items():
            model, guess = f["pass_at_k_model"], f["pass_at_k_uniform_guess"]
            lines.append(
                f"| {name} | {100 * model['1']:.1f} | {100 * model['8']:.1f} |"
                f" {100 * model['64']:.1f} | {100 * guess['1']:.1f} / {100 * guess['64']:.1f} |"
                f" {100 * f['well_formed_rate']:.1f} |"
                f" {100 * f.get('teacher_view_accuracy', float('nan')):.1f} |"
            )
        lines.append("")
        report["feasibility"] = feasibility
    lines += [f"### Methods ({seeds} seeds each, {out})", "", (out / TABLE_MD).read_text()]

    # ε_w sweep: rlrt at 0.2 and 0.5 next to the main comparison's rlrt (1.0) and grpo.
    sweep_rows: dict[str, Any] = {}
    for eps in SWEEP:
        folder = Path(f"{out}_eps_w{eps}")
        if seeds_of(folder, "rlrt"):
            write_comparison(folder, ["rlrt"], seeds_of(folder, "rlrt"))
            sweep_rows[eps] = json.loads((folder / "compare.json").read_text())["methods"]["rlrt"]
    if "rlrt" in table["methods"]:
        sweep_rows["1.0"] = table["methods"]["rlrt"]
    if sweep_rows:
        lines += [
            "### ε_w sweep (rlrt)",
            "",
            "| ε_w | Seeds | Train reward, last 10 steps | avg@64 | pass@8 | pass@64 |",
            "|:---:|:---:|:---:|:---:|:---:|:---:|",
        ]
        rows = sorted(sweep_rows.items(), key=lambda kv: float(kv[0]))
        if "grpo" in table["methods"]:
            rows.append(("grpo (reference)", table["methods"]["grpo"]))
        for eps, row in rows:
            r, k = row["train_reward_mean_last_10"], row["eval_pass@k"]
            cells = [f"{s['mean']:.1f} ± {s['std']:.1f}" for s in (k["1"], k["8"], k["64"])]
            lines.append(
                f"| {eps} | {len(row['seeds'])} | {r['mean']:.3f} ± {r['std']:.3f} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
        report["sweep"] = {eps: row for eps, row in sweep_rows.items()}

    # Collapse check and entropy, per method.
    rewards = reward_curves(out, methods, seeds)
    entropy = reward_curves(out, methods, seeds, "policy/entropy")
    lines += [
        "### Collapse check",
        "",
        f"| Method | Reward, first {args.window} steps → last {args.window} (seed mean) |"
        f" Collapse (< half the first) | Entropy, first {args.window} → last {args.window} |",
        "|---|:---:|:---:|:---:|",
    ]
    report["collapse"] = {}
    for m in methods:
        step, first, last = collapse_step(rewards[m], args.window)
        ent = [s for s in entropy[m] if s]
        e0 = float(np.mean([np.mean(s[: args.window]) for s in ent])) if ent else float("nan")
        e1 = float(np.mean([np.mean(s[-args.window :]) for s in ent])) if ent else float("nan")
        report["collapse"][m] = {
            "step": step,
            "reward_first": first,
            "reward_last": last,
            "entropy_first": e0,
            "entropy_last": e1,
        }
        where = f"at step {step}" if step else f"none in {min(len(s) for s in rewards[m])} steps"
        lines.append(f"| {m} | {first:.3f} → {last:.3f} | {where} | {e0:.3f} → {e1:.3f} |")
    lines.append("")

    signal_lines, report["teacher_signal"] = teacher_signal(out, methods, seeds)
    lines += ["### Teacher signal (mean over steps and seeds)", "", *signal_lines]

    # Verdicts, claim by claim.
    rows = table["methods"]
    verdicts: list[str] = []
    if {"grpo", "rlrt"} <= set(rows):
        found, report["rlrt_vs_grpo"] = rlrt_vs_grpo(rows)
        verdicts += found
    if "rlrt_all" in report["collapse"]:
        c, r = report["collapse"]["rlrt_all"], report["collapse"].get("rlrt")
        verdicts.append(
            "RLRT-all collapses: "
            + (f"yes, from step {c['step']}" if c["step"] else "no")
            + f" (reward {c['reward_first']:.3f} → {c['reward_last']:.3f}, entropy "
            f"{c['entropy_first']:.3f} → {c['entropy_last']:.3f}"
            + (
                f"; rlrt: reward {r['reward_first']:.3f} → {r['reward_last']:.3f}, entropy "
                f"{r['entropy_first']:.3f} → {r['entropy_last']:.3f}"
                if r
                else ""
            )
            + ")."
        )
    if len(sweep_rows) > 1:
        best = max(sweep_rows, key=lambda e: sweep_rows[e]["train_reward_mean_last_10"]["mean"])
        verdicts.append(
            f"Highest train reward in the ε_w sweep: ε_w = {best} (means; see the "
            "table for the spread)."
        )
        if "grpo" in rows:
            above = {
                e: compare_outcome(
                    r["train_reward_mean_last_10"], rows["grpo"]["train_reward_mean_last_10"]
                )[0]
                for e, r in sweep_rows.items()
            }
            verdicts.append(f"RLRT's train reward vs GRPO per ε_w: {above}.")
    if "base" in table:
        base64 = table["base"]["eval_pass@k"]["64"]
        narrowing = {
            m: compare_outcome(rows[m]["eval_pass@k"]["64"], base64)
            for m in methods
            if "64" in rows[m]["eval_pass@k"]
        }
        verdicts.append(
            "pass@64 vs the warmed-up model: "
            + ", ".join(
                f"{m} {o[0]} ({o[1]:+.1f} vs spread {o[2]:.1f})" for m, o in narrowing.items()
            )
            + "."
        )
        report["pass64_vs_base"] = {m: list(o) for m, o in narrowing.items()}
    # The same comparison with a teacher that reads its context (teacher-view warm-up).
    tv = Path(f"{out}_teacher_view")
    tv_methods = [m for m in ("grpo", "rlrt") if seeds_of(tv, m)]
    if tv_methods:
        tv_seeds = min(seeds_of(tv, m) for m in tv_methods)
        write_comparison(tv, tv_methods, tv_seeds)
        tv_table = json.loads((tv / "compare.json").read_text())
        for name in (CURVES_PNG, ENTROPY_PNG, PASS_AT_K_PNG):
            if (tv / name).exists():
                shutil.copyfile(tv / name, figures / f"teacher_view_{name}")
        signal_lines, tv_signal = teacher_signal(tv, tv_methods, tv_seeds)
        lines += [
            f"### With a teacher that reads its context ({tv_seeds} seeds each, {tv})",
            "",
            (tv / TABLE_MD).read_text(),
            *signal_lines,
        ]
        report["teacher_view"] = {"table": tv_table, "teacher_signal": tv_signal}
        if set(tv_methods) == {"grpo", "rlrt"}:
            found, report["teacher_view"]["rlrt_vs_grpo"] = rlrt_vs_grpo(
                tv_table["methods"], " (teacher-view warm-up)"
            )
            verdicts += found

    lines += ["### Verdicts (computed)", ""] + [f"- {v}" for v in verdicts] + [""]
    lines += [
        "Rules: two means differ only when their difference exceeds the larger seed std; "
        f"a collapse is the seed-mean train reward ({args.window}-step moving average) "
        "falling below half of its first window."
    ]
    report["verdicts"] = verdicts
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
