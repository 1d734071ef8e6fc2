"""What RLRT costs over GRPO per step: both methods from the same warmed-up model, one after the
other in one run, on the quickstart config (configs/quickstart_cpu.yaml).

    python benchmarks/method_overhead.py --work runs/quickstart/work [--steps 25]

``--work`` is a quickstart's ``work/`` folder (warmed-up model and data; `make quickstart` or
``rlrt quickstart`` writes it). Each method trains ``--steps`` RL steps with evaluation off and
no checkpoints; the script prints the median and mean ``time/step`` over steps 3..N, the median
phase split, and the ratio RLRT / GRPO (issue 15's goal: ≤ 1.10). Both take the on-policy
shortcut and have no scoring pass: RLRT's extra work is the forward of the teacher views of its
correct rollouts, which the actor runs inside the update call (the ``update`` phase) before
weighting A_t with Eq. 6's D_t from the update's own forward (`DeferredReweighting`).

Nothing else should run on the machine meanwhile: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart_cpu.yaml"
PHASES = ("rollout", "reward", "logprobs", "update", "sync")
FIRST_MEASURED_STEP = 3


def run_config(work: Path, method: str, steps: int, run_dir: Path) -> dict:
    """The quickstart's run config (its ``quickstart:`` section dropped) on ``work``'s model and
    RL data, for ``method``, without evaluation or checkpoints."""
    import yaml

    tree = yaml.safe_load(QUICKSTART.read_text())
    tree.pop("quickstart", None)
    tree.pop("eval", None)
    tree["model"] = {"path": str(work / "warm_model")}
    tree["data"] = {**tree["data"], "train_files": [str(work / "data" / "rl.jsonl")]}
    tree["trainer"] = {
        **tree["trainer"],
        "steps": steps,
        "run_dir": str(run_dir),
        "resume": "never",
        "save_every": 10_000,
        "save_hf": False,
        "console": False,
    }
    tree["algorithm"] = {**tree["algorithm"], "method": method}
    if method != "rlrt":
        tree["algorithm"].pop("eps_w", None)
    return tree


def measure(work: Path, method: str, steps: int, out: Path) -> list[dict]:
    import yaml

    run_dir = out / method
    if run_dir.exists():
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{method}.yaml"
    config.write_text(yaml.safe_dump(run_config(work, method, steps, run_dir), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (out / f"{method}.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-m", "rlrt_megatron.cli", "train", str(config)],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[FIRST_MEASURED_STEP - 1 :]


def summarize(method: str, rows: list[dict]) -> tuple[float, str]:
    times = [r["time/step"] for r in rows]
    phases = ", ".join(
        f"{p} {statistics.median(r.get(f'time/{p}', 0.0) for r in rows):.2f}" for p in PHASES
    )
    teacher = statistics.mean(r.get("teacher/batch_size", 0.0) for r in rows)
    reward = statistics.mean(r["reward/mean"] for r in rows)
    median, mean = statistics.median(times), statistics.mean(times)
    last = FIRST_MEASURED_STEP + len(rows) - 1
    line = (
        f"  {method:<5} median {median:.3f} s/step, mean {mean:.3f} (steps "
        f"{FIRST_MEASURED_STEP}-{last}); phases (median s): {phases}; teacher rows/step "
        f"{teacher:.1f}; reward {reward:.3f}"
    )
    return statistics.median(times), line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a quickstart's work/ folder")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_method_overhead"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    if (
        not (work / "warm_model" / "config.json").is_file()
        or not (work / "data" / "rl.jsonl").is_file()
    ):
        parser.error(f"{work} is not a quickstart work folder (warm_model/, data/rl.jsonl)")
    if args.steps < FIRST_MEASURED_STEP + 2:
        parser.error(f"--steps must be at least {FIRST_MEASURED_STEP + 2}")
    results = {}
    for method in ("grpo", "rlrt"):
        results[method] = summarize(method, measure(work, method, args.steps, Path(args.out)))
        print(results[method][1], flush=True)
    ratio = results["rlrt"][0] / results["grpo"][0]
    print(f"  ratio RLRT / GRPO median s/step: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
