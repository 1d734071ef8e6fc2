"""`rlrt compare` end to end on the tiny setup (2 methods x 2 seeds x 2 steps through the real
stack): it writes the table and the figure, the table's statistics are those of the runs'
summaries, and a second call reruns nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from _eval_test_graders import parity_grade

from rlrt_megatron.cli import main
from rlrt_megatron.data.synthetic import write_arithmetic_splits
from rlrt_megatron.evaluation import commands  # noqa: F401  (registers rlrt eval / compare)
from rlrt_megatron.rewards.registry import register_reward
from rlrt_megatron.trainer.metrics import read_metrics

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]

METHODS, SEEDS, STEPS = ("grpo", "rlrt"), 2, 2


@pytest.fixture(scope="module")
def config_file(tiny_qwen3_dir, tmp_path_factory):
    register_reward("eval_parity", parity_grade, overwrite=True)
    folder = tmp_path_factory.mktemp("compare_cfg")
    train_file, test_file = write_arithmetic_splits(
        folder, num_train=12, num_test=4, seed=1, levels=(1,)
    )
    config = {
        "model": {"path": str(tiny_qwen3_dir)},
        "data": {
            "train_files": [str(train_file)],
            "eval_files": [str(test_file)],
            "prompts_per_step": 2,
            "rollouts_per_prompt": 4,
            "max_prompt_tokens": 128,
        },
        "trainer": {"steps": STEPS, "run_dir": "unused", "save_every": 100, "console": False},
        "actor": {
            "dtype": "float32",
            "cpus_per_rank": 0.02,
            "optimizer": {"lr": 1e-3, "warmup_steps": 0},
        },
        "rollout": {"dtype": "float32", "max_response_tokens": 16, "cpus_per_engine": 0.1},
        "reward": {"name": "eval_parity", "num_workers": 1},
        "eval": {"n": 2, "max_response_tokens": 16},
        "ray": {"num_cpus": 2},
    }
    path = folder / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_compare_writes_table_and_figure_from_the_runs(config_file, tmp_path, capsys):
    out = tmp_path / "compare"
    argv = ["compare", str(config_file), "--methods", ",".join(METHODS), "--seeds", str(SEEDS),
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = json.loads((out / "compare.json").read_text())
    assert list(table["methods"]) == list(METHODS) and table["eval_n"] == 2
    for method in METHODS:
        summaries = [
            json.loads((out / method / f"seed{s}" / "summary.json").read_text())
            for s in range(SEEDS)
        ]
        assert [s["method"] for s in summaries] == [method] * SEEDS
        row = table["methods"][method]
        for key, values in (
            ("train_reward_last", [s["train_reward_last"] for s in summaries]),
            ("eval_avg@n", [100 * s["eval_after"]["accuracy"] for s in summaries]),
            ("eval_pass@n", [100 * s["eval_after"]["pass@2"] for s in summaries]),
            ("eval_avg@n_before", [100 * s["eval_before"]["accuracy"] for s in summaries]),
        ):
            assert row[key]["values"] == values
            assert row[key]["mean"] == float(np.mean(values))
            assert row[key]["std"] == float(np.std(values, ddof=1))
        for s in range(SEEDS):
            assert len(read_metrics(out / method / f"seed{s}")) == STEPS
    md = (out / "compare.md").read_text()
    grpo = table["methods"]["grpo"]["train_reward_last"]
    assert f"| grpo | {SEEDS} | {grpo['mean']:.3f} ± {grpo['std']:.3f} |" in md
    assert md in capsys.readouterr().out
    png = out / "reward_curves.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000

    # Finished runs are not rerun: the summaries stay as they are.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")} == stamps


def test_compare_refuses_unknown_methods_before_training(config_file, tmp_path, capsys):
    argv = ["compare", str(config_file), "--methods", "grpo,nope", "--output", str(tmp_path)]
    assert main(argv) == 1
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_preempted_or_torn_summary_is_not_a_finished_run(tmp_path):
    from rlrt_megatron.trainer.compare import run_finished

    assert not run_finished(tmp_path)
    (tmp_path / "summary.json").write_text('{"steps": 2, "preempted": true}')
    assert not run_finished(tmp_path)  # requeued: it resumes
    (tmp_path / "summary.json").write_text('{"steps": 2, "tra')
    assert not run_finished(tmp_path)
    (tmp_path / "summary.json").write_text('{"steps": 2}')
    assert run_finished(tmp_path)
