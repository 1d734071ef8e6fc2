"""`rlrt quickstart` end to end at a toy budget: the shipped config, its data preparation (SFT and
RL problems disjoint), the warm-up, two RL steps on the real stack, the summary it writes, and its
quiet console (the engine's and rank's output in the run's logs/ folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlrt_megatron.cli import main
from rlrt_megatron.data.readers import read_jsonl
from rlrt_megatron.megatron.checkpoint import resolve_hf_model
from rlrt_megatron.trainer.metrics import CONSOLE_KEYS, read_metrics

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart_cpu.yaml"


def test_quickstart_at_a_toy_budget(tmp_path, capfd):
    run_dir = tmp_path / "quickstart"
    overrides = [
        f"trainer.run_dir={run_dir}",
        "trainer.steps=2",
        "trainer.console=false",
        "quickstart.task.num_train=48",
        "quickstart.task.num_rl=16",
        "quickstart.task.num_test=6",
        "quickstart.warmup.steps=3",
        "data.prompts_per_step=4",
        "data.rollouts_per_prompt=2",
        "eval.n=2",
        "actor.cpus_per_rank=0.02",
        "rollout.cpus_per_engine=0.1",
    ]
    assert main(["quickstart", "--config", str(CONFIG), *overrides]) == 0
    out, err = capfd.readouterr()

    # Quiet console: phase lines and the summary; the engine's and the rank's own output (vLLM's
    # INFO lines, megatron's) is in <run_dir>/logs/, which the console names.
    logs = run_dir / "logs"
    engine_log, rank_log = (logs / "engine_0.log").read_text(), (logs / "rank_0.log").read_text()
    assert engine_log.startswith("==== engine_0: pid") and rank_log.startswith("==== rank_0: pid")
    assert "vllm" in engine_log.lower() and len(engine_log.splitlines()) > 5
    assert f"{logs}/" in out
    assert len(out.splitlines()) <= 60, out
    assert "Failed to load weights" not in out + err
    assert "vllm" not in out.lower(), out
    # The progress bar shows metrics the step emits.
    assert set(CONSOLE_KEYS) <= set(read_metrics(run_dir)[-1]), CONSOLE_KEYS

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "rlrt" and summary["steps"] == 2
    for key in (
        "train_reward_first",
        "train_reward_last",
        "train_reward_mean_first_10",
        "train_reward_mean_last_10",
    ):
        assert 0.0 <= summary[key] <= 1.0
    for key in ("eval_accuracy_before", "eval_accuracy_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["eval_accuracy_delta"] == pytest.approx(
        summary["eval_accuracy_after"] - summary["eval_accuracy_before"]
    )
    assert summary["seconds"] > 0

    data = run_dir / "work" / "data"
    sft, _ = read_jsonl(data / "sft.jsonl")
    rl, _ = read_jsonl(data / "rl.jsonl")
    test, _ = read_jsonl(data / "test.jsonl")
    assert (len(sft), len(rl), len(test)) == (48, 16, 6)
    questions = [{r.question for r in split} for split in (sft, rl, test)]
    assert not (questions[0] & questions[1] or questions[0] & questions[2])
    assert not questions[1] & questions[2]
    # The run's last checkpoint is directly usable as a HF model (rlrt eval / analyze).
    assert (resolve_hf_model(run_dir) / "config.json").is_file()
