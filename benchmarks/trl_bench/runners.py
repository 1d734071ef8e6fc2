"""Running one workload under TRL and under `rlrt train`, each as a subprocess, and reading back
per-step figures in one shape (`RunResult`).

TRL runs in its own venv (``.venv-bench``, `trl_worker.py`); `rlrt train` in the project venv.
Memory: a sampler thread sums the resident set of the subprocess and all its descendants every
0.2 s (`rlrt train` is a driver plus Ray's processes: raylet, the rank, the engine, reward
workers; TRL is one process). Shared pages (Ray's object store, shared libraries) count once per
process that maps them, so the sum over-states the tree's memory somewhat.

Other load (WORKLOAD.md "other-load"): the cores kept busy by processes outside the tree during
the run, (busy jiffies of /proc/stat − the tree's CPU time) / wall; above ~0.1 the run was
disturbed and its times are not comparable with a quiet machine's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
TRL_WORKER = Path(__file__).with_name("trl_worker.py")
FIRST_MEASURED_STEP = 3  # WORKLOAD.md: medians over steps 3..N (1-based)


@dataclass
class RunResult:
    """One system's run of one workload.

    ``steps``: per step (1-based order), ``seconds``, ``tokens`` (completion tokens, EOS in,
    padding out) and ``phases`` {name: seconds}."""

    system: str
    steps: list[dict] = field(default_factory=list)
    peak_tree_rss_gb: float = 0.0
    peak_process_rss_gb: float = 0.0
    wall_seconds: float = 0.0
    startup_seconds: float | None = None
    other_load: float = 0.0
    first_measured: int = FIRST_MEASURED_STEP
    """1-based index of the first step the medians count (1 for `pooled` results, whose steps
    are already the measured ones)."""

    def measured(self) -> list[dict]:
        return self.steps[self.first_measured - 1 :]

    @classmethod
    def pooled(cls, runs: list[RunResult]) -> RunResult:
        """One system's rounds as one result: the measured steps of every round (so medians
        pool them), the highest peaks and other-load, the median start-up and wall time."""
        if len(runs) == 1:
            return runs[0]
        startups = [r.startup_seconds for r in runs if r.startup_seconds is not None]
        return cls(
            system=runs[0].system,
            steps=[s for r in runs for s in r.measured()],
            peak_tree_rss_gb=max(r.peak_tree_rss_gb for r in runs),
            peak_process_rss_gb=max(r.peak_process_rss_gb for r in runs),
            wall_seconds=statistics.median(r.wall_seconds for r in runs),
            startup_seconds=statistics.median(startups) if startups else None,
            other_load=max(r.other_load for r in runs),
            first_measured=1,
        )

    @property
    def median_step(self) -> float:
        return statistics.median(s["seconds"] for s in self.measured())

    @property
    def median_tok_s(self) -> float:
        return statistics.median(s["tokens"] / s["seconds"] for s in self.measured())

    def median_phases(self) -> dict[str, float]:
        names = {k for s in self.measured() for k in s["phases"]}
        return {
            k: statistics.median(s["phases"].get(k, 0.0) for s in self.measured())
            for k in sorted(names)
        }


class TreeMemory:
    """Peak RSS of a process and its descendants, sampled in a background thread."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_tree = 0
        self.peak_process = 0
        self.cpu_seconds: dict[int, float] = {}  # per pid, last seen user + system time
        self.other_load = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    times = p.cpu_times()
                except psutil.Error:
                    continue
                self.cpu_seconds[p.pid] = times.user + times.system
                total += rss
                self.peak_process = max(self.peak_process, rss)
            self.peak_tree = max(self.peak_tree, total)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def busy_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat, all but idle and iowait)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _run_measured(cmd: list[str], log_file: Path, env: dict[str, str]) -> tuple[float, TreeMemory]:
    start, busy = time.perf_counter(), busy_cpu_seconds()
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        memory = TreeMemory(proc.pid)
        code = proc.wait()
        memory.stop()
    if code != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}; last lines of {log_file}:\n{tail}")
    wall = time.perf_counter() - start
    memory.other_load = max(busy_cpu_seconds() - busy - sum(memory.cpu_seconds.values()), 0) / wall
    return wall, memory


def run_trl(folder: Path, bench_python: Path) -> RunResult:
    """TRL's GRPOTrainer on the workload in ``folder`` (see `trl_worker.py`)."""
    out = folder / "trl_result.json"
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of this project in TRL's process
    wall, memory = _run_measured(
        [str(bench_python), str(TRL_WORKER), str(folder), str(out)], folder / "trl.log", env
    )
    record = json.loads(out.read_text())
    return RunResult(
        system="TRL",
        steps=record["steps"],
        peak_tree_rss_gb=memory.peak_tree / 1e9,
        peak_process_rss_gb=memory.peak_process / 1e9,
        wall_seconds=wall,
        startup_seconds=record.get("startup_seconds"),
        other_load=memory.other_load,
    )


RLRT_PHASES = ("rollout", "reward", "logprobs", "update", "rollout_wait", "sync")


def run_rlrt(folder: Path, overrides: tuple[str, ...] = (), label: str = "rlrt") -> RunResult:
    """`rlrt train` (grpo) on the workload in ``folder`` with ``key=value`` ``overrides`` of its
    ``rlrt.yaml``; per-step figures from the run's ``metrics.jsonl`` (``time/step``,
    ``time/<phase>``, ``response/length_mean``). ``label`` names the system and the run folder."""
    info = json.loads((folder / "workload.json").read_text())
    run_dir = folder / f"{label}_run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "rlrt_megatron.cli", "train", str(folder / "rlrt.yaml")]
    cmd += [f"trainer.run_dir={run_dir}", *overrides]
    wall, memory = _run_measured(cmd, folder / f"{label}.log", env)
    rows = info["prompts_per_step"] * info["num_generations"]
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        phases = {p: m[f"time/{p}"] for p in RLRT_PHASES if f"time/{p}" in m}
        phases["other"] = max(m["time/step"] - sum(phases.values()), 0.0)
        steps.append(
            {
                "seconds": m["time/step"],
                "tokens": round(m["response/length_mean"] * rows),
                "phases": phases,
            }
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    return RunResult(
        system=label,
        steps=steps,
        peak_tree_rss_gb=memory.peak_tree / 1e9,
        peak_process_rss_gb=memory.peak_process / 1e9,
        wall_seconds=wall,
        startup_seconds=summary.get("startup_seconds"),
        other_load=memory.other_load,
    )
