"""Smoke tests of examples/: each script runs as a user would run it (a subprocess, tiny settings),
and its printed results are checked against what the example claims to show."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LAUNCH_PYTHON = REPO / ".venv-launch" / "bin" / "python"
needs_launch_venv = pytest.mark.skipif(
    not LAUNCH_PYTHON.is_file(),
    reason=f"{LAUNCH_PYTHON} is missing: `make setup-launch` creates it (make test does)",
)


def _run(python: Path | str, script: str, *args: str, tmp_path: Path, timeout: float = 600) -> str:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",  # the CI machine has 2 shared cores
        NEMORUN_HOME=str(tmp_path / "nemo_home"),
        TMPDIR=str(tmp_path),
        COLUMNS="200",
    )
    result = subprocess.run(
        [str(python), str(EXAMPLES / script), *args],
        cwd=tmp_path,  # examples must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_readme_lists_every_example():
    readme = (EXAMPLES / "README.md").read_text()
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert len(scripts) == 5
    for script in scripts:
        assert f"examples/{script}" in readme, script


@pytest.mark.slow
def test_algorithm_core_loop(tmp_path):
    out = _run(
        sys.executable,
        "algorithm_core_loop.py",
        "--steps", "2", "--rollouts", "8", "--max-tokens", "8",
        tmp_path=tmp_path,
    )  # fmt: skip
    pattern = re.compile(
        r"^step (\d): reward ([\d.]+) \| rows with a peer (\d+)/32 \| reweighted tokens (\d+) "
        r"\(w>1 ([\d.]+), w<1 ([\d.]+)\) \| loss ([-+\d.]+) \| "
        r"log-prob of A>0 rollouts ([-\d.]+) -> ([-\d.]+)$",
        re.MULTILINE,
    )
    steps = pattern.findall(out)
    assert [int(s[0]) for s in steps] == [1, 2], out
    for _, reward, peers, reweighted, gt1, lt1, loss, before, after in steps:
        assert 0.0 < float(reward) < 1.0  # mixed groups: the toy reward gives a signal
        assert int(peers) > 0 and int(reweighted) > 0  # RLRT's teacher was used
        assert 0.0 <= float(gt1) + float(lt1) <= 1.0
        assert math.isfinite(float(loss))
        # The update moved the policy towards the rollouts with a positive advantage.
        assert float(after) > float(before)


def test_custom_reward(tmp_path):
    out = _run(sys.executable, "custom_reward.py", tmp_path=tmp_path, timeout=300)
    graded = [line.split(" | ")[0].split() for line in out.splitlines() if " | " in line]
    assert [(score, status) for score, status, *_ in graded] == [
        ("1", "correct"),  # 9.8 vs 9.81: within 1 %
        ("1", "correct"),  # 12,000 vs 11950: within 1 %
        ("0", "wrong"),
        ("0", "no_answer"),
        ("0", "timeout"),  # the hanging grader was killed by the pool
    ]
    assert "reward_mean 0.40 timeout_rate 0.20" in out


def test_custom_method(tmp_path):
    out = _run(sys.executable, "custom_method.py", tmp_path=tmp_path, timeout=300)
    assert "'method': 'rlrt_incorrect', 'normalize_by_std': True, 'lam_init': 0.5" in out
    assert "'eps_w': 0.5" in out
    assert "rlrt: teacher forward on rows [0, 2]" in out
    assert "rlrt_incorrect: teacher forward on rows [1, 3]" in out
    # Hand-computed (λ 0.5, ε_w 0.5): D = ±log 2, 0 → clip(exp(sign(A)·D), 0.5, 1.5) = 1.5 / 0.5 / 1
    # → (1 − λ) + λ·w = 1.25 / 0.75 / 1 on reweighted rows; 1 elsewhere.
    rows = re.findall(r"^  row (\d) \(r=(\d), A=([-+\d.]+)\): (.+)$", out, flags=re.MULTILINE)
    assert len(rows) == 8
    rlrt, custom = rows[:4], rows[4:]
    for row, reward, _, cells in rlrt:
        assert cells == ("1.250 0.750 1.000" if reward == "1" else "1.000 1.000 1.000"), row
    for row, reward, _, cells in custom:
        assert cells == ("0.750 1.250 1.000" if reward == "0" else "1.000 1.000 1.000"), row
    loss = re.search(r"^loss ([-+\d.]+), pg tokens 12, grad norm ([\d.]+)$", out, re.MULTILINE)
    assert loss and float(loss.group(1)) != 0.0 and float(loss.group(2)) > 0.0, out


@needs_launch_venv
def test_slurm_paper_dry_run(tmp_path):
    out = _run(
        LAUNCH_PYTHON,
        "slurm_paper_dry_run.py",
        "--account", "acct", "--partition", "batch", "--job-dir", str(tmp_path / "jobs"),
        tmp_path=tmp_path,
        timeout=300,
    )  # fmt: skip
    for line in (
        "#SBATCH --account=acct",
        "#SBATCH --partition=batch",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --time=04:00:00",
        "export RLRT_NET_IFNAME=ib0",
        f"export RLRT_WORKDIR={REPO}",
    ):
        assert line in out.splitlines(), line
    assert "--container-image nvcr.io/nvidia/pytorch:25.01-py3" in out
    assert (
        f"bash {REPO}/slurm/ray_bootstrap.sh node 2 rlrt train "
        "configs/paper/qwen3_8b_base/rlrt.yaml trainer.steps=200 trainer.save_every=20"
    ) in out


@needs_launch_venv
def test_nemo_sweep_dry_run(tmp_path):
    out = _run(LAUNCH_PYTHON, "nemo_sweep_dry_run.py", tmp_path=tmp_path, timeout=300)
    tasks = re.findall(r"^# ---- task (\S+) ----$", out, flags=re.MULTILINE)
    grid = [(e, d) for e in ("0.2", "0.5", "1.0") for d in ("0", "30")]
    assert tasks == [f"rlrt-4b-instruct-grid-eps_w{e}_lam_decay_steps{d}" for e, d in grid]
    commands = [line for line in out.splitlines() if line.startswith("rlrt train ")]
    assert commands == [
        "rlrt train configs/paper/qwen3_4b_instruct_2507/rlrt.yaml "
        f"algorithm.eps_w={e} algorithm.lam_decay_steps={d} "
        f"trainer.run_dir=runs/sweeps/4b_instruct_grid/eps_w{e}_lam_decay_steps{d}"
        for e, d in grid
    ]
