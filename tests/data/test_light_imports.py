"""Data and reward modules stay light: no torch, engines or cluster code at import time.

The reward pool's spawned workers import `rlrt_megatron.rewards` afresh for every (re)start, and
data tooling runs on login nodes: neither should pay for torch, Megatron, vLLM or Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import rlrt_megatron

REPO_ROOT = Path(rlrt_megatron.__file__).resolve().parents[1]

HEAVY = ("torch", "megatron", "vllm", "ray", "transformers", "transformer_engine")


def test_data_and_rewards_import_no_heavy_packages() -> None:
    code = (
        "import json, sys\n"
        "import rlrt_megatron.data, rlrt_megatron.data.synthetic, rlrt_megatron.rewards\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
