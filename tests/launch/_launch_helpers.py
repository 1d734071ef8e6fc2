"""Helpers shared by the launch tests (imported by name: every test folder has a conftest.py, so
`from conftest import ...` would be ambiguous in a full run)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "slurm" / "ray_bootstrap.sh"
LAUNCH_PYTHON = REPO / ".venv-launch" / "bin" / "python"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a launched process: this venv's tools first, no inherited Ray address,
    one thread per process (2 shared cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", RLRT_PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def assert_two_steps(run_dir: Path) -> list[dict]:
    """The run finished its two steps with finite metrics in range."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= row["reward/mean"] <= 1.0
        assert row["update/loss"] == row["update/loss"]  # not NaN
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and not summary.get("preempted")
    return rows
