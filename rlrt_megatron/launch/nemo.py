"""NeMo-Run recipes for rlrt: the trainer entry point as a ``run.Script`` on a local or Slurm
executor, one recipe per paper config, sweeps as experiments, and a small CLI::

    python -m rlrt_megatron.launch.nemo --list
    python -m rlrt_megatron.launch.nemo --paper qwen3_8b_base/rlrt --executor slurm \\
        --account ACC --partition batch --nodes 2 --container-image IMAGE --dry-run
    python -m rlrt_megatron.launch.nemo --paper qwen3_4b_base/rlrt \\
        --sweep algorithm.eps_w=0.2,0.5,1.0 --executor slurm --account ACC ...

Needs the optional ``launch`` extra (nemo-run 0.11.1 with leptonai 0.27.3), which clashes with
vLLM's dependencies: install it in its own venv (``make setup-launch`` → ``.venv-launch``). The
recipes only *launch* ``rlrt train``; the trainer itself runs with the main install (``--python``
or the container's ``rlrt``).

Multi-node (Slurm) tasks run ``slurm/ray_bootstrap.sh node NODES rlrt train ...`` as one task per
node, the same per-node bootstrap as ``slurm/rlrt_ray.sbatch``: node 0 starts the Ray head and the
trainer, the others join as workers and stop when the head is done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nemo_run as run

from rlrt_megatron.launch.paper import (
    REPO_ROOT,
    paper_config,
    paper_configs,
    parse_sweep,
    sweep_tasks,
)

DEFAULT_TRAINER = ("rlrt", "train")
BOOTSTRAP = "slurm/ray_bootstrap.sh"


def train_script(
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    trainer: Sequence[str] = DEFAULT_TRAINER,
    nodes: int = 1,
    workdir: str | Path = REPO_ROOT,
    env: dict[str, str] | None = None,
) -> run.Script:
    """``rlrt train CONFIG OVERRIDES`` as a NeMo-Run script.

    ``trainer`` is the command that takes ``CONFIG OVERRIDES`` (e.g. ``[sys.executable, "-m",
    "rlrt_megatron.cli", "train"]`` to pin an interpreter). With ``nodes > 1`` the command runs
    under the Ray bootstrap on every node (one task per node); ``workdir`` is the repository on
    a file system all nodes see (the bootstrap and the head's address file live there).
    """
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    command = [*trainer, str(config), *overrides]
    env = dict(env or {})
    if nodes == 1:
        # Script runs `entrypoint path *args`: exactly the command, split at its first two words.
        return run.Script(entrypoint=command[0], path=command[1], args=command[2:], env=env)
    workdir = Path(workdir)
    env.setdefault("RLRT_WORKDIR", str(workdir))
    # Expanded by the batch script's shell: one address file per job (and requeue).
    env.setdefault(
        "RLRT_RAY_ADDRESS_FILE",
        f"{workdir}/logs/ray-head-address-${{SLURM_JOB_ID}}-${{SLURM_RESTART_COUNT:-0}}",
    )
    # Ray token authentication on, as in slurm/rlrt_ray.sbatch: node 0's bootstrap writes a fresh
    # token (mode 0600) there before the head starts; every node reads it. A mode or token the
    # caller chose is kept.
    if not any(k in env for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        env["RAY_AUTH_TOKEN_PATH"] = (
            f"{workdir}/logs/ray-auth-token-${{SLURM_JOB_ID}}-${{SLURM_RESTART_COUNT:-0}}"
        )
    return run.Script(path=str(workdir / BOOTSTRAP), args=["node", str(nodes), *command], env=env)


def local_executor(env: dict[str, str] | None = None) -> run.LocalExecutor:
    """This machine, one process (the trainer starts its own Ray workers)."""
    return run.LocalExecutor(ntasks_per_node=1, env_vars=dict(env or {}))


def slurm_executor(
    *,
    account: str,
    partition: str | None = None,
    time: str = "24:00:00",
    nodes: int = 2,
    gpus_per_node: int = 8,
    container_image: str | None = None,
    container_mounts: Sequence[str] = (),
    env: dict[str, str] | None = None,
    job_dir: str | Path | None = None,
    exclusive: bool = True,
) -> run.SlurmExecutor:
    """A Slurm allocation of ``nodes`` whole nodes with one task per node (the Ray bootstrap),
    submitted from this (login) node; no code packaging (``run.Packager()``): the repository
    must be on a shared file system, mounted into the container if one is used."""
    mounts = list(container_mounts)
    if container_image and not any(m.split(":", 1)[0] == str(REPO_ROOT) for m in mounts):
        mounts.append(f"{REPO_ROOT}:{REPO_ROOT}")
    return run.SlurmExecutor(
        account=account,
        partition=partition,
        time=time,
        nodes=nodes,
        ntasks_per_node=1,
        gpus_per_node=gpus_per_node,
        exclusive=exclusive,
        container_image=container_image,
        container_mounts=mounts,
        env_vars=dict(env or {}),
        packager=run.Packager(),
        tunnel=run.LocalTunnel(job_dir=str(job_dir or REPO_ROOT / "logs" / "nemo_run")),
    )


def paper_recipe(name: str, overrides: Sequence[str] = (), **script_kwargs) -> run.Script:
    """The recipe of paper config ``<backbone>/<method>`` (see :func:`paper_configs`)."""
    path = paper_config(name)
    return train_script(path.relative_to(REPO_ROOT), overrides, **script_kwargs)


def build_experiment(
    title: str,
    tasks: Sequence[tuple[str, run.Script]],
    executor: run.LocalExecutor | run.SlurmExecutor,
) -> run.Experiment:
    """An experiment of ``(name, script)`` tasks, each on a copy of ``executor``."""
    experiment = run.Experiment(title)
    with experiment:
        for name, script in tasks:
            experiment.add(script, executor=executor.clone(), name=name, tail_logs=False)
    return experiment


def dry_run(experiment: run.Experiment) -> list[str]:
    """What each task would run: the sbatch script (Slurm) or the command line (local)."""
    experiment.dryrun(log=False, delete_exp_dir=False)
    rendered = []
    for job in experiment.jobs:
        info = getattr(job, "_dryrun_info", None)
        request = getattr(info, "request", None)
        if hasattr(request, "materialize"):
            rendered.append(request.materialize())
        else:
            rendered.append(" ".join(job.task.to_command(with_entrypoint=True)))
    return rendered


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlrt_megatron.launch.nemo",
        description="Launch rlrt train through NeMo-Run (local or Slurm).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="a run config YAML")
    what.add_argument("--paper", help="a paper recipe, <backbone>/<method> (see --list)")
    what.add_argument("--list", action="store_true", help="list the paper recipes")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for rlrt train")
    parser.add_argument("--sweep", help="KEY=V1,V2,...: one task per value (an experiment)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--name", help="experiment name (default: from the config)")
    parser.add_argument(
        "--python", help="interpreter that runs the trainer (python -m rlrt_megatron.cli)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--detach", action="store_true", help="submit and return (Slurm)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the task")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--account")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", default="24:00:00")
    slurm.add_argument("--nodes", type=int, default=2)
    slurm.add_argument("--gpus-per-node", type=int, default=8)
    slurm.add_argument("--container-image")
    slurm.add_argument("--container-mounts", default="", help="comma-separated SRC:DST")
    slurm.add_argument("--job-dir", help="where NeMo-Run keeps the job's files and logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, path in paper_configs().items():
            print(f"{name:<36}{path.relative_to(REPO_ROOT)}")
        return 0
    if args.paper:
        try:
            config = paper_config(args.paper).relative_to(REPO_ROOT)
        except KeyError as error:
            raise SystemExit(str(error)) from None
        title = args.name or f"rlrt-{args.paper.replace('/', '-')}"
    else:
        config = Path(args.config)
        if not config.is_file():
            raise SystemExit(f"--config {config}: no such file")
        title = args.name or f"rlrt-{config.stem}"
    env = _parse_env(args.env)
    trainer = (args.python, "-m", "rlrt_megatron.cli", "train") if args.python else None
    if args.executor == "slurm":
        if not args.account:
            raise SystemExit("--executor slurm needs --account")
        mounts = [m for m in args.container_mounts.split(",") if m]
        executor = slurm_executor(
            account=args.account,
            partition=args.partition,
            time=args.time,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            container_image=args.container_image,
            container_mounts=mounts,
            job_dir=args.job_dir,
        )
        nodes = args.nodes
    else:
        executor, nodes = local_executor(), 1
    script_kwargs = dict(nodes=nodes, env=env, trainer=trainer or DEFAULT_TRAINER)
    if args.sweep:
        try:
            key, values = parse_sweep(args.sweep)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        tasks = [
            (name, train_script(config, [*args.overrides, *extra], **script_kwargs))
            for name, extra in sweep_tasks(title, key, values, _run_dir(config, args.overrides))
        ]
    else:
        tasks = [(title, train_script(config, args.overrides, **script_kwargs))]
    experiment = build_experiment(title, tasks, executor)
    if args.dry_run:
        for (name, _), text in zip(tasks, dry_run(experiment), strict=True):
            print(f"# ---- task {name} ----\n{text}")
        return 0
    with experiment:
        experiment.run(sequential=args.executor == "local", detach=args.detach)
    if args.detach:
        return 0
    # What Experiment.status() prints, as values (it only returns them for non-local executors).
    states = [str(job.status(experiment._runner)) for job in experiment.jobs]
    print("task states: " + ", ".join(states))
    return 0 if all(state.endswith("SUCCEEDED") for state in states) else 1


def _run_dir(config: Path, overrides: Sequence[str]) -> str | None:
    """The run folder the config (with overrides) names, for per-task sweep folders."""
    for item in reversed(overrides):
        if item.startswith("trainer.run_dir="):
            return item.split("=", 1)[1]
    from rlrt_megatron.configuration import read_yaml  # resolves the base: chain

    return read_yaml(config).get("trainer", {}).get("run_dir")


if __name__ == "__main__":
    sys.exit(main())
