"""A paper config submitted to Slurm as a dry run: the sbatch script NeMo-Run would submit.

The paper's RLRT run on Qwen3-8B-Base (`configs/paper/qwen3_8b_base/rlrt.yaml`) on two 8-GPU nodes:
one task per node runs `slurm/ray_bootstrap.sh`, which starts the Ray head and the trainer on the
first node and joins the others as Ray workers. Nothing is submitted; the script is printed.
Runs in the launch venv (NeMo-Run's pins clash with vLLM's; `make setup-launch`):

    .venv-launch/bin/python examples/slurm_paper_dry_run.py --account ACC --partition batch

Check the layout first with the main install: `rlrt plan configs/paper/qwen3_8b_base/rlrt.yaml`.
To really submit: a `--job-dir` on the shared file system, and
`with experiment: experiment.run(detach=True)` instead of `dry_run`.
"""

from __future__ import annotations

import argparse
import tempfile

from rlrt_megatron.launch.nemo import build_experiment, dry_run, paper_recipe, slurm_executor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="qwen3_8b_base/rlrt", help="<backbone>/<method>")
    parser.add_argument("--account", default="my_account")
    parser.add_argument("--partition", default="batch")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--container-image", default="nvcr.io/nvidia/pytorch:25.01-py3")
    parser.add_argument("--job-dir", default=None, help="NeMo-Run's job folder (default: a temp)")
    args = parser.parse_args()

    # The trainer command with run overrides; the environment reaches every node's task.
    script = paper_recipe(
        args.recipe,
        ["trainer.steps=200", "trainer.save_every=20"],
        nodes=args.nodes,
        env={"RLRT_NET_IFNAME": "ib0"},
    )
    # A dry run only renders paths in NeMo-Run's job folder: a temporary one unless given.
    with tempfile.TemporaryDirectory(prefix="nemo_jobs_") as scratch:
        executor = slurm_executor(
            account=args.account,
            partition=args.partition,
            time="04:00:00",
            nodes=args.nodes,
            gpus_per_node=8,
            container_image=args.container_image,
            container_mounts=["/lustre/models:/lustre/models"],
            job_dir=args.job_dir or scratch,
        )
        name = "rlrt-" + args.recipe.replace("/", "-")
        experiment = build_experiment(name, [(name, script)], executor)
        (sbatch,) = dry_run(experiment)
    print(sbatch)


if __name__ == "__main__":
    main()
