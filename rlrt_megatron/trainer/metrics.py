"""Where a run's metrics go: TensorBoard, a jsonl file in the run folder, and the console.

Every step's metrics land in ``metrics.jsonl`` (one JSON object per step, appended, so a resumed
run continues the same file) and, when TensorBoard is installed, in the run folder's event files.
The console shows a progress bar with the few metrics a person watches (reward, accuracy, loss,
step time).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)
REWARD_WINDOW = 10  # steps averaged for summary.json's first/last train reward

CONSOLE_LABELS = {
    "reward/mean": "reward",
    "reward/accuracy": "accuracy",
    "update/loss": "loss",
    "update/grad_norm": "grad_norm",
    "lambda": "lambda",
    "time/step": "s/step",
}
"""The progress bar's metrics (keys that `rl_step` emits) and the names it shows them by."""
CONSOLE_KEYS = tuple(CONSOLE_LABELS)


class MetricsLogger:
    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int | None = None,
        tensorboard: bool = True,
        console: bool = True,
        initial_step: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        _drop_torn_tail(self.jsonl_path)
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self._bar = None
        if console:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True
            )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record one step's metrics (non-numeric values go to the jsonl file only)."""
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self._bar is not None:
            shown = {
                label: f"{record[k]:.4g}"
                for k, label in CONSOLE_LABELS.items()
                if _is_num(record.get(k))
            }
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)

    def message(self, text: str) -> None:
        """One line for the person watching: above the progress bar, or the log without one."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            logger.info(text)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics of every logged step, in order (the last record wins for a repeated step).

    A line that is not a whole record (a kill in the middle of an append leaves a torn last
    line) is skipped with a warning."""
    by_step: dict[int, dict] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                by_step[int(record["step"])] = record
            except (ValueError, KeyError, TypeError):
                logger.warning("%s:%d: not a complete metrics record, skipped", path, number)
    return [by_step[s] for s in sorted(by_step)]


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (an append interrupted by a kill), so that the next
    record starts on a line of its own instead of being glued to the fragment."""
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        start = max(0, size - (1 << 20))  # a record is far shorter than 1 MiB
        handle.seek(start)
        cut = handle.read().rfind(b"\n")
        if cut < 0 and start > 0:  # no line end near the end: end the fragment's line instead
            handle.write(b"\n")
            return
        keep = start + cut + 1
        logger.warning("%s: dropping a torn last line (%d bytes)", path, size - keep)
        handle.truncate(keep)


class StepTimer:
    """Wall-clock time of a step's phases: ``with timer("rollout"): ...`` → ``time/rollout``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        out = {f"time/{phase}": s for phase, s in self.seconds.items()}
        out["time/step"] = time.perf_counter() - self._start
        return out


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: object) -> object:
    """Tensors and numpy scalars → Python numbers, so the jsonl stays plain JSON."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def seconds_since_launch() -> float:
    """Wall seconds since this process started (its imports included), from /proc where there is
    one, else since this module was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()
