"""A NeMo-Run sweep as a dry run: a grid over two hyperparameters, one task and run folder each.

The paper tunes RLRT's clip radius ε_w and λ's decay per backbone (ε_w 0.5 with λ decaying over
30 steps for instruct models). This grid, ε_w × λ-decay on Qwen3-4B-Instruct-2507, is one NeMo-Run
experiment of six `rlrt train` tasks; every task gets its own `trainer.run_dir`, so `resume: auto`
never mixes two runs. Nothing runs: each task's command (local) or sbatch script (Slurm) is
printed. Runs in the launch venv (`make setup-launch`):

    .venv-launch/bin/python examples/nemo_sweep_dry_run.py
    .venv-launch/bin/python examples/nemo_sweep_dry_run.py --slurm-account ACC   # sbatch scripts

(`python -m rlrt_megatron.launch.nemo --paper ... --sweep KEY=V1,V2` sweeps one key from the
command line; a grid, or any other set of override lists, is this much Python.)
"""

from __future__ import annotations

import argparse
import itertools
import tempfile

from rlrt_megatron.launch.nemo import (
    build_experiment,
    dry_run,
    local_executor,
    paper_recipe,
    slurm_executor,
)

RECIPE = "qwen3_4b_instruct_2507/rlrt"
GRID = {"algorithm.eps_w": ["0.2", "0.5", "1.0"], "algorithm.lam_decay_steps": ["0", "30"]}


def grid_tasks(title: str, run_root: str) -> list[tuple[str, list[str]]]:
    """(task name, overrides) for every point of GRID, each with its own run folder."""
    tasks = []
    for values in itertools.product(*GRID.values()):
        tag = "_".join(f"{key.rsplit('.', 1)[-1]}{v}" for key, v in zip(GRID, values, strict=True))
        overrides = [f"{key}={v}" for key, v in zip(GRID, values, strict=True)]
        tasks.append((f"{title}-{tag}", [*overrides, f"trainer.run_dir={run_root}/{tag}"]))
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slurm-account", help="render sbatch scripts instead of local commands")
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()

    title = "rlrt-4b-instruct-grid"
    scratch = tempfile.TemporaryDirectory(prefix="nemo_jobs_")  # job folder of a dry run
    if args.slurm_account:
        nodes = args.nodes
        executor = slurm_executor(account=args.slurm_account, nodes=nodes, job_dir=scratch.name)
    else:
        nodes, executor = 1, local_executor()
    tasks = [
        (name, paper_recipe(RECIPE, overrides, nodes=nodes))
        for name, overrides in grid_tasks(title, "runs/sweeps/4b_instruct_grid")
    ]
    experiment = build_experiment(title, tasks, executor)
    with scratch:
        rendered = dry_run(experiment)
    for (name, _), text in zip(tasks, rendered, strict=True):
        print(f"# ---- task {name} ----\n{text}")


if __name__ == "__main__":
    main()
