import json
import os
import signal
import subprocess
import sys

import pytest

from rlrt_megatron.trainer.metrics import (
    MetricsLogger,
    StepTimer,
    read_metrics,
    seconds_since_launch,
)
from rlrt_megatron.trainer.preemption import PreemptionHandler


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path, total_steps=2, console=False) as logger:
        logger.log(1, {"reward/mean": 0.25, "loss": float("nan"), "method": "rlrt"})
        logger.log(2, {"reward/mean": 0.5, "loss": 0.1})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == "nan" and records[0]["method"] == "rlrt"
    assert records[1]["reward/mean"] == 0.5
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("reward/mean")] == [0.25, 0.5]
    assert [e.step for e in acc.Scalars("loss")] == [2]  # NaN is kept out of TensorBoard


def test_a_resumed_run_appends_and_the_last_record_wins(tmp_path):
    with MetricsLogger(tmp_path, console=False, tensorboard=False) as logger:
        logger.log(1, {"x": 1.0})
        logger.log(2, {"x": 2.0})
    with MetricsLogger(tmp_path, console=False, tensorboard=False, initial_step=1) as logger:
        logger.log(2, {"x": 20.0})
    assert [r["x"] for r in read_metrics(tmp_path)] == [1.0, 20.0]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1]) == {"step": 2, "x": 20.0}


def test_step_timer():
    timer = StepTimer()
    with timer("rollout"):
        pass
    with timer("rollout"):
        pass
    metrics = timer.metrics()
    assert set(metrics) == {"time/rollout", "time/step"}
    assert 0 <= metrics["time/rollout"] <= metrics["time/step"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_sets_the_flag_and_is_restored(sig):
    previous = signal.getsignal(sig)
    with PreemptionHandler() as handler:
        assert not handler.should_stop
        os.kill(os.getpid(), sig)
        assert handler.should_stop and handler.received == sig
    assert signal.getsignal(sig) == previous


def test_a_torn_last_line_is_skipped_by_readers_and_cut_by_the_next_writer(tmp_path):
    """A kill in the middle of an append leaves half a record without its newline."""
    with MetricsLogger(tmp_path, console=False, tensorboard=False) as logger:
        logger.log(1, {"reward/mean": 0.1})
        logger.log(2, {"reward/mean": 0.2})
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 3, "reward/me')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    # The resumed run appends step 3 again: it lands on a line of its own, readable.
    with MetricsLogger(tmp_path, console=False, tensorboard=False, initial_step=2) as logger:
        logger.log(3, {"reward/mean": 0.3})
    assert [r["reward/mean"] for r in read_metrics(tmp_path)] == [0.1, 0.2, 0.3]
    assert path.read_text().count("\n") == 3
    # A torn line in the middle (from an older tool) is skipped too, not fatal.
    path.write_text('{"step": 1, "x": 1}\n{"ste\n{"step": 2, "x": 2}\n')
    assert [r["x"] for r in read_metrics(tmp_path)] == [1, 2]


def test_seconds_since_launch_counts_from_the_process_start():
    # A fresh interpreter sleeps before importing the module: the time counts from its launch.
    code = (
        "import time; time.sleep(1.5); "
        "from rlrt_megatron.trainer.metrics import seconds_since_launch as s; print(s())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 1.5 <= float(out.stdout) < 120
    assert 0 < seconds_since_launch()


def test_message_goes_above_the_bar_or_to_the_log(tmp_path, capsys, caplog):
    with MetricsLogger(tmp_path, tensorboard=False, console=True, total_steps=1) as log:
        log.message("start-up 1.0 s")
    assert "start-up 1.0 s" in capsys.readouterr().out
    with caplog.at_level("INFO"), MetricsLogger(tmp_path, tensorboard=False, console=False) as log:
        log.message("start-up 2.0 s")
    assert "start-up 2.0 s" in caplog.text
