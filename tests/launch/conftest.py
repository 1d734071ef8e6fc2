"""Shared setup of the launch tests: a tiny run config (tiny Qwen3, synthetic arithmetic data, two
RL steps on the real stack) written as a YAML file, as `rlrt train CONFIG` takes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_train_config(tiny_qwen3_dir, tmp_path_factory):
    """A function run_dir -> path of a 2-step run config (RLRT, tiny model, math reward)."""
    from rlrt_megatron.data.synthetic import write_arithmetic_splits

    data = tmp_path_factory.mktemp("launch_data")
    train_file, _ = write_arithmetic_splits(data, num_train=8, num_test=2, seed=0, levels=(1,))

    def make(run_dir: Path) -> Path:
        config = {
            "model": {"path": str(tiny_qwen3_dir)},
            "data": {
                "train_files": [str(train_file)],
                "prompts_per_step": 2,
                "rollouts_per_prompt": 4,
                "max_prompt_tokens": 128,
            },
            "trainer": {
                "steps": 2,
                "run_dir": str(run_dir),
                "console": False,
                "save_every": 100,
                "save_hf": False,
            },
            "algorithm": {"method": "rlrt"},
            "actor": {
                "dtype": "float32",
                "cpus_per_rank": 0.02,
                "optimizer": {"lr": 1.0e-3, "warmup_steps": 0},
            },
            "rollout": {"dtype": "float32", "max_response_tokens": 16, "cpus_per_engine": 0.1},
            "reward": {"name": "math", "num_workers": 1},
        }
        path = run_dir.parent / f"{run_dir.name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make
