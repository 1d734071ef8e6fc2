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

Outputs: ``compare.json``, ``compare.md`` and ``reward_curves.png`` (train reward per step, mean
over seeds with a ±1 std band, per method; each seed's curve is a trailing moving average over
steps // 16 steps, e.g. 5 of 80).
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

TABLE_JSON, TABLE_MD, CURVES_PNG = "compare.json", "compare.md", "reward_curves.png"


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
    from rlrt_megatron.trainer.quickstart import QuickstartConfig, prepare

    tree = deep_merge(read_yaml(config_path), parse_overrides(list(overrides)))
    quick_tree = tree.pop("quickstart", None)
    if quick_tree is None:
        return tree
    try:
        quick = from_dict(QuickstartConfig, quick_tree)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: quickstart.{e}") from None
    warm, train_file, test_file = prepare(quick, output / "work")
    return deep_merge(
        tree,
        {
            "model": {"path": str(warm)},
            "data": {"train_files": [str(train_file)], "eval_files": [str(test_file)]},
        },
    )


def _stat(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "values": [float(x) for x in v]}


def collect(output: Path, methods: Sequence[str], seeds: int) -> dict[str, Any]:
    """compare.json's content from the runs' ``summary.json`` files (all must exist)."""
    table: dict[str, Any] = {"methods": {}}
    eval_n = None
    for method in methods:
        rewards, accs, passes, before = [], [], [], []
        for seed in range(seeds):
            path = run_dir_of(output, method, seed) / "summary.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the run has not finished")
            summary = json.loads(path.read_text())
            rewards.append(summary["train_reward_last"])
            after = summary.get("eval_after")
            if after is None:
                raise ValueError(f"{path}: no eval_after (the config has no data.eval_files)")
            n = int(after["samples_per_prompt"])
            if eval_n not in (None, n):
                raise ValueError(f"{path}: eval n={n}, other runs used n={eval_n}")
            eval_n = n
            accs.append(100.0 * after["accuracy"])
            passes.append(100.0 * after[f"pass@{n}"])
            if "eval_before" in summary:
                before.append(100.0 * summary["eval_before"]["accuracy"])
        row = {
            "seeds": list(range(seeds)),
            "train_reward_last": _stat(rewards),
            "eval_avg@n": _stat(accs),
            "eval_pass@n": _stat(passes),
        }
        if len(before) == seeds:
            row["eval_avg@n_before"] = _stat(before)
        table["methods"][method] = row
    table["eval_n"] = eval_n
    return table


def markdown(table: dict[str, Any]) -> str:
    n = table["eval_n"]

    def cell(stat: dict[str, Any], digits: int) -> str:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"

    lines = [
        f"Mean ± std over seeds. Held-out avg@{n} / pass@{n} in %; train reward = mean reward of"
        " the last step's rollouts.",
        "",
        f"| Method | Seeds | Final train reward | Held-out avg@{n} (before → after) |"
        f" Held-out pass@{n} |",
        "|---|:---:|:---:|:---:|:---:|",
    ]
    for method, row in table["methods"].items():
        before = row.get("eval_avg@n_before")
        acc = cell(row["eval_avg@n"], 1)
        if before is not None:
            acc = f"{before['mean']:.1f} → {acc}"
        lines.append(
            f"| {method} | {len(row['seeds'])} | {cell(row['train_reward_last'], 3)} | {acc} |"
            f" {cell(row['eval_pass@n'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def reward_curves(output: Path, methods: Sequence[str], seeds: int) -> dict[str, list[list[float]]]:
    """Per method, each seed's ``reward/mean`` per step (from its metrics.jsonl)."""
    from rlrt_megatron.trainer.metrics import read_metrics

    return {
        m: [
            [r["reward/mean"] for r in read_metrics(run_dir_of(output, m, s))] for s in range(seeds)
        ]
        for m in methods
    }


def write_comparison(output: Path, methods: Sequence[str], seeds: int) -> Path:
    """compare.json, compare.md and reward_curves.png from finished runs; returns compare.md."""
    from rlrt_megatron.evaluation.plots import plot_reward_curves

    table = collect(output, methods, seeds)
    (output / TABLE_JSON).write_text(json.dumps(table, indent=2) + "\n")
    md = output / TABLE_MD
    md.write_text(markdown(table))
    curves = reward_curves(output, methods, seeds)
    steps = min(len(c) for series in curves.values() for c in series)
    # ~16 independent points along the run: one step's reward is noisy at small batch sizes.
    plot_reward_curves(curves, output / CURVES_PNG, smooth=max(1, steps // 16))
    return md
