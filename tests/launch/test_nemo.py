"""NeMo-Run recipes, run with the launch venv (`.venv-launch`, `make setup-launch`): nemo-run's
dependencies clash with vLLM's, so it never enters the main venv. The recipes' trainer runs with
the main venv's interpreter, passed explicitly."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from _launch_helpers import LAUNCH_PYTHON, REPO, assert_two_steps, child_env

needs_launch_venv = pytest.mark.skipif(
    not LAUNCH_PYTHON.is_file(),
    reason=f"{LAUNCH_PYTHON} is missing: `make setup-launch` creates it (make test does)",
)
IMAGE = "nvcr.io/nvidia/pytorch:25.01-py3"


def _nemo(tmp_path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    home = tmp_path / "nemo_home"
    return subprocess.run(
        [str(LAUNCH_PYTHON), "-m", "rlrt_megatron.launch.nemo", *argv],
        cwd=REPO,
        env=child_env(NEMORUN_HOME=str(home), COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_core_package_imports_without_nemo_run():
    """`rlrt_megatron.launch`, the plan command and the paper recipes' enumeration need no
    nemo_run; the recipe module says what is missing when it is absent."""
    code = (
        "import sys; import rlrt_megatron.launch, rlrt_megatron.launch.plan_command, "
        "rlrt_megatron.launch.paper; assert 'nemo_run' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@needs_launch_venv
def test_slurm_dry_run_of_a_two_node_paper_config(tmp_path):
    result = _nemo(
        tmp_path,
        "--paper",
        "qwen3_8b_base/rlrt",
        "--executor",
        "slurm",
        "--account",
        "acct",
        "--partition",
        "batch",
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--container-image",
        IMAGE,
        "--container-mounts",
        "/lustre/models:/models",
        "--job-dir",
        str(tmp_path / "jobs"),
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert "#SBATCH --nodes=2" in script
    assert "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --account=acct" in script and "#SBATCH --partition=batch" in script
    assert f"--container-image {IMAGE}" in script
    assert "/lustre/models:/models" in script and f"{REPO}:{REPO}" in script
    # One task per node runs the Ray bootstrap, which runs the trainer on node 0.
    command = f"bash {REPO}/slurm/ray_bootstrap.sh node 2 rlrt train"
    assert f"{command} configs/paper/qwen3_8b_base/rlrt.yaml" in script
    assert f"export RLRT_WORKDIR={REPO}" in script
    assert "RLRT_RAY_ADDRESS_FILE=" in script
    assert "RAY_AUTH_TOKEN_PATH=" in script  # Ray token authentication on this path too


@needs_launch_venv
def test_sweep_is_an_experiment_of_three_tasks(tmp_path):
    result = _nemo(
        tmp_path,
        "--paper",
        "qwen3_4b_base/rlrt",
        "--sweep",
        "algorithm.eps_w=0.2,0.5,1.0",
        "--executor",
        "slurm",
        "--account",
        "acct",
        "--job-dir",
        str(tmp_path / "jobs"),
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    tasks = re.findall(r"^# ---- task (\S+) ----$", result.stdout, flags=re.MULTILINE)
    assert tasks == [f"rlrt-qwen3_4b_base-rlrt-eps_w{v}" for v in ("0.2", "0.5", "1.0")]
    for value in ("0.2", "0.5", "1.0"):
        assert (
            f"configs/paper/qwen3_4b_base/rlrt.yaml algorithm.eps_w={value} "
            f"trainer.run_dir=runs/paper/qwen3_4b_base/rlrt_eps_w{value}"
        ) in result.stdout


@needs_launch_venv
def test_list_and_unknown_recipe(tmp_path):
    listed = _nemo(tmp_path, "--list")
    assert listed.returncode == 0
    assert len(listed.stdout.splitlines()) == 32
    assert "qwen3_8b_no_think/srpo" in listed.stdout
    unknown = _nemo(tmp_path, "--paper", "qwen3_99b/rlrt", "--dry-run")
    assert unknown.returncode != 0 and "no paper config 'qwen3_99b/rlrt'" in unknown.stderr


def test_sweep_parsing_and_task_overrides():
    from rlrt_megatron.launch.paper import parse_sweep, sweep_tasks

    assert parse_sweep("algorithm.eps_w=0.2, 0.5,1.0") == ("algorithm.eps_w", ["0.2", "0.5", "1.0"])
    for bad in ("eps", "=1,2", "algorithm.eps_w="):
        with pytest.raises(ValueError, match="expected KEY=V1,V2"):
            parse_sweep(bad)
    assert sweep_tasks("x/y", "algorithm.lam_decay_steps", ["0", "30"], "runs/a") == [
        (
            "x-y-lam_decay_steps0",
            ["algorithm.lam_decay_steps=0", "trainer.run_dir=runs/a_lam_decay_steps0"],
        ),
        (
            "x-y-lam_decay_steps30",
            ["algorithm.lam_decay_steps=30", "trainer.run_dir=runs/a_lam_decay_steps30"],
        ),
    ]


@needs_launch_venv
def test_failing_trainer_fails_the_local_task(tmp_path, tiny_train_config):
    config = tiny_train_config(tmp_path / "bad_run")
    result = _nemo(
        tmp_path,
        "--config",
        str(config),
        "trainer.no_such_key=1",
        "--executor",
        "local",
        "--python",
        sys.executable,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "task states: " in result.stdout and "FAILED" in result.stdout


@needs_launch_venv
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.vllm
def test_two_steps_through_the_local_executor(tmp_path, tiny_train_config):
    run_dir = tmp_path / "run"
    config = tiny_train_config(run_dir)
    result = _nemo(
        tmp_path,
        "--config",
        str(config),
        "ray.num_cpus=2",
        "--executor",
        "local",
        "--python",
        sys.executable,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "task states: SUCCEEDED" in result.stdout
    assert_two_steps(run_dir)
