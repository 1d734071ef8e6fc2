"""``rlrt compare``: the paper's method comparison in miniature (its Figure 5 and a results table).

Every method × seed is one ordinary training run (`rlrt_megatron.trainer.loop.train`) of the same
config — same task, data order (``data.seed``), budget and learning rate — with
``algorithm.method=<method>`` and ``trainer.seed=<seed>`` (which seeds rollout sampling, teacher
choices and evaluation sampling), in ``OUTPUT/<method>/seed<seed>/`` (hence this module lives
with the trainer). Runs run one after another; a run with a ``summary.json`` is finished and is
not rerun, an interrupted one resumes from its last checkpoint (``trainer.resume=auto``), so the
whole comparison is resumable.

A quickstart config (with a ``quickstart:`` section) builds the tiny model, the task and the SFT
warm-up once, in ``OUTPUT/work/``, and every run starts from that warmed-up model.

Evaluation: each run's own held-out evaluation before and after training (``eval.n`` samples
per problem of ``data.eval_files`` with the ``eval.*`` sampling; ``summary.json``'s
``eval_before`` / ``eval_after``), so no extra engine is started per run. The table reports, per
method, mean ± sample std (ddof=1; 0 for one seed) over seeds of: the final train reward
(``train_reward_last``), held-out avg@n (``eval_after.accuracy``) and pass@n, in percent.

Outputs: ``compare.json``, ``compare.md``, ``reward_curves.png`` and ``entropy_curves.png`` (train
reward and policy entropy per step, mean over seeds with a ±1 std band, per method; each seed's
curve is a trailing moving average over steps // 16 steps, e.g. 5 of 80; the entropy curves show
a collapse such as RLRT-all's, App. G.2) and ``pass_at_k.png`` (held-out pass@k for k = 1, 2, 4,
…, n after training, mean ± std over seeds, against the warmed-up model's curve pooled over every
run's evaluation before training; the paper's Figure 8).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlrt_megatron.configuration import (
    ConfigError,
    deep_merge,
    from_dict,
    parse_overrides,
    read_yaml,
)
from rlrt_megatron.trainer.metrics import REWARD_WINDOW

TABLE_JSON, TABLE_MD, CURVES_PNG = "compare.json", "compare.md", "reward_curves.png"
ENTROPY_PNG, PASS_AT_K_PNG = "entropy_curves.png", "pass_at_k.png"


def run_dir_of(output: Path, method: str, seed: int) -> Path:
    return Path(output) / method / f"seed{seed}"


def run_compare(
    config_path: str | Path,
    methods: Sequence[str],
    seeds: int,
    output: str | Path,
    overrides: Sequence[str] = (),
) -> Path:
    """Train every (method, seed) not finished yet, then write the table and figure; returns the
    markdown table's path."""
    from rlrt_megatron.algorithms.registry import METHODS
    from rlrt_megatron.trainer.config import RunConfig
    from rlrt_megatron.trainer.loop import train

    if not methods:
        raise ValueError("--methods is empty")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"a method is listed twice in {list(methods)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    output = Path(output)
    tree = base_tree(config_path, overrides, output)
    configs = {}
    for method in methods:  # build every config first: a bad override fails before any training
        for seed in range(seeds):
            run_dir = run_dir_of(output, method, seed)
            run_tree = deep_merge(
                tree,
                {
                    "algorithm": {"method": method},
                    "trainer": {"seed": seed, "run_dir": str(run_dir)},
                },
            )
            try:
                configs[method, seed] = from_dict(RunConfig, run_tree)
            except ConfigError as e:
                raise ConfigError(f"{config_path} ({method}, seed {seed}): {e}") from None
    for (method, seed), config in configs.items():
        if not run_finished(config.run_dir):
            print(f"compare: training {method} seed {seed} in {config.run_dir}", flush=True)
            train(config)
    return write_comparison(output, methods, seeds)


def run_finished(run_dir: Path) -> bool:
    """A run folder whose ``summary.json`` is that of a finished run (a pre-empted run writes one
    too, marked ``preempted``: it resumes)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return False
    try:
        return not json.loads(path.read_text()).get("preempted", False)
    except ValueError:  # torn by a kill: rerun (resumes from the last checkpoint)
        return False


def base_tree(config_path: str | Path, overrides: Sequence[str], output: Path) -> dict[str, Any]:
    """The config every run shares; a ``quickstart:`` section is prepared once (model, data and
    SFT warm-up in ``output/work``) and replaced by the model path and data files it yields."""
    from rlrt_megatron.trainer.quickstart import QuickstartConfig, apply_quickstart

    tree = deep_merge(read_yaml(config_path), parse_overrides(list(overrides)))
    quick_tree = tree.pop("quickstart", None)
    if quick_tree is None:
        return tree
    try:
        quick = from_dict(QuickstartConfig, quick_tree)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: quickstart.{e}") from None
    try:
        return apply_quickstart(tree, quick, quick.work_folder(output / "work"))
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None


def _stat(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "values": [float(x) for x in v]}


TABLE_KS = (8, 64)
"""pass@k columns of the table (those ≤ the evaluation's n; pass@n is always shown). pass@1 is the
avg@n column: the unbiased pass@1 estimator is the mean accuracy over the n samples."""


def _pass_at_k(metrics: dict[str, Any]) -> dict[int, float]:
    """``{k: pass@k in %}`` from an evaluation's metrics (keys ``pass@<k>``)."""
    return {
        int(key.split("@", 1)[1]): 100.0 * value
        for key, value in metrics.items()
        if key.startswith("pass@")
    }


def _curve_stats(curves: Sequence[dict[int, float]]) -> dict[str, dict[str, Any]]:
    """Per k present in every curve: mean ± std over the curves (keys are str for JSON)."""
    ks = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {str(k): _stat([c[k] for c in curves]) for k in ks}


def collect(output: Path, methods: Sequence[str], seeds: int) -> dict[str, Any]:
    """compare.json's content from the runs' ``summary.json`` files (all must exist).

    Per method: ``train_reward_last``, ``train_reward_mean_last_10`` (the mean reward of the
    last 10 steps, `rlrt_megatron.trainer.metrics.REWARD_WINDOW`), ``eval_avg@n``,
    ``eval_pass@n``, the whole pass@k curve ``eval_pass@k`` ({k: stat}) after training and,
    when the runs evaluated before training, ``eval_avg@n_before`` / ``eval_pass@k_before``.
    ``base`` pools every run's evaluation before training (all start from the same model; each
    seed samples its own evaluation): the warmed-up model's curve the methods are compared with.
    """
    table: dict[str, Any] = {"methods": {}}
    eval_n = None
    base_curves: list[dict[int, float]] = []
    base_accs: list[float] = []
    for method in methods:
        rewards, rewards_window, accs, passes, before = [], [], [], [], []
        curves, curves_before = [], []
        for seed in range(seeds):
            path = run_dir_of(output, method, seed) / "summary.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the run has not finished")
            summary = json.loads(path.read_text())
            rewards.append(summary["train_reward_last"])
            if f"train_reward_mean_last_{REWARD_WINDOW}" in summary:
                rewards_window.append(summary[f"train_reward_mean_last_{REWARD_WINDOW}"])
            after = summary.get("eval_after")
            if after is None:
                raise ValueError(f"{path}: no eval_after (the config has no data.eval_files)")
            n = int(after["samples_per_prompt"])
            if eval_n not in (None, n):
                raise ValueError(f"{path}: eval n={n}, other runs used n={eval_n}")
            eval_n = n
            accs.append(100.0 * after["accuracy"])
            passes.append(100.0 * after[f"pass@{n}"])
            curves.append(_pass_at_k(after))
            if "eval_before" in summary:
                before.append(100.0 * summary["eval_before"]["accuracy"])
                curves_before.append(_pass_at_k(summary["eval_before"]))
        row = {
            "seeds": list(range(seeds)),
            "train_reward_last": _stat(rewards),
            "eval_avg@n": _stat(accs),
            "eval_pass@n": _stat(passes),
            "eval_pass@k": _curve_stats(curves),
        }
        if len(rewards_window) == seeds:  # one step's reward is noisy: the last window's mean
            row[f"train_reward_mean_last_{REWARD_WINDOW}"] = _stat(rewards_window)
        if len(before) == seeds:
            row["eval_avg@n_before"] = _stat(before)
            row["eval_pass@k_before"] = _curve_stats(curves_before)
            base_accs += before
            base_curves += curves_before
        table["methods"][method] = row
    table["eval_n"] = eval_n
    if base_curves:
        table["base"] = {
            "runs": len(base_curves),
            "eval_avg@n": _stat(base_accs),
            "eval_pass@k": _curve_stats(base_curves),
        }
    return table


def compare_outcome(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, float, float]:
    """("higher" | "lower" | "no difference", mean(a) − mean(b), the larger std) for a vs b.

    ``a``/``b`` are `_stat` dicts (mean and std over seeds). A difference no larger than the
    larger seed std is reported as "no difference" (issue 18's rule for the miniature claims).
    """
    diff, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
    if abs(diff) <= spread:
        return "no difference", diff, spread
    return ("higher" if diff > 0 else "lower"), diff, spread


def collapse_step(
    series: Sequence[Sequence[float]], window: int
) -> tuple[int | None, float, float]:
    """(first step where the seed-mean smoothed reward < half of its first window's value, or
    None; the first window's value; the last window's value).

    ``series``: one reward per step per seed; each is smoothed by a trailing ``window``-step
    mean, then the seeds are averaged. The paper reports RLRT-all "collapses around step 40"
    (App. G.2) without a numeric rule; half the starting reward is this library's rule.
    """
    from rlrt_megatron.evaluation.plots import moving_average

    length = min(len(s) for s in series)
    if length < window:
        raise ValueError(f"collapse_step needs >= {window} steps per seed, got {length}")
    curve = np.mean([moving_average(s[:length], window) for s in series], axis=0)
    start = curve[window - 1]
    below = [i for i in range(window - 1, length) if curve[i] < 0.5 * start]
    return (below[0] + 1 if below else None), float(start), float(curve[-1])


def markdown(table: dict[str, Any]) -> str:
    n = table["eval_n"]
    ks = [k for k in TABLE_KS if k < n] + [n]

    def cell(stat: dict[str, Any], digits: int) -> str:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"

    def pass_cells(curve: dict[str, Any]) -> str:
        return " | ".join(cell(curve[str(k)], 1) if str(k) in curve else "–" for k in ks)

    lines = [
        f"Mean ± std over seeds. Held-out avg@{n} (= pass@1) and pass@k in %; train reward = mean"
        " reward of the last step's rollouts.",
        "",
        f"| Method | Seeds | Final train reward | Train reward, last {REWARD_WINDOW} steps |"
        f" Held-out avg@{n} (before → after) | " + " | ".join(f"pass@{k}" for k in ks) + " |",
        "|---|:---:|:---:|:---:|:---:|" + ":---:|" * len(ks),
    ]
    base = table.get("base")
    if base is not None:
        lines.append(
            f"| warmed-up model | {base['runs']} runs | – | – | {cell(base['eval_avg@n'], 1)} | "
            f"{pass_cells(base['eval_pass@k'])} |"
        )
    for method, row in table["methods"].items():
        before = row.get("eval_avg@n_before")
        acc = cell(row["eval_avg@n"], 1)
        if before is not None:
            acc = f"{before['mean']:.1f} → {acc}"
        curve = row.get("eval_pass@k") or {str(n): row["eval_pass@n"]}
        window = row.get(f"train_reward_mean_last_{REWARD_WINDOW}")
        lines.append(
            f"| {method} | {len(row['seeds'])} | {cell(row['train_reward_last'], 3)} |"
            f" {cell(window, 3) if window else '–'} | {acc} | {pass_cells(curve)} |"
        )
    return "\n".join(lines) + "\n"


def reward_curves(
    output: Path, methods: Sequence[str], seeds: int, key: str = "reward/mean"
) -> dict[str, list[list[float]]]:
    """Per method, each seed's ``key`` (a metrics.jsonl column) per step; steps without it are
    skipped."""
    from rlrt_megatron.trainer.metrics import read_metrics

    return {
        m: [
            [r[key] for r in read_metrics(run_dir_of(output, m, s)) if key in r]
            for s in range(seeds)
        ]
        for m in methods
    }


def write_comparison(output: Path, methods: Sequence[str], seeds: int) -> Path:
    """compare.json, compare.md, reward_curves.png, entropy_curves.png (when the runs logged the
    policy's entropy) and pass_at_k.png (when they evaluated) from finished runs; returns
    compare.md."""
    from rlrt_megatron.evaluation.plots import plot_pass_at_k_stats, plot_reward_curves

    table = collect(output, methods, seeds)
    (output / TABLE_JSON).write_text(json.dumps(table, indent=2) + "\n")
    md = output / TABLE_MD
    md.write_text(markdown(table))
    for key, png, label in (
        ("reward/mean", CURVES_PNG, "train reward"),
        ("policy/entropy", ENTROPY_PNG, "entropy (nats/token)"),
    ):
        curves = reward_curves(output, methods, seeds, key)
        steps = min(len(c) for series in curves.values() for c in series)
        if steps:
            # ~16 independent points along the run: one step's value is noisy at small batches.
            plot_reward_curves(curves, output / png, ylabel=label, smooth=max(1, steps // 16))
    curves_k = {m: row["eval_pass@k"] for m, row in table["methods"].items() if row["eval_pass@k"]}
    if curves_k:
        if "base" in table:
            curves_k = {"warmed-up model": table["base"]["eval_pass@k"], **curves_k}
        plot_pass_at_k_stats(curves_k, output / PASS_AT_K_PNG)
    return md
