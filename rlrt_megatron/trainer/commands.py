"""``rlrt train`` and ``rlrt quickstart`` (registered with the CLI when it first builds)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rlrt_megatron.command_registry import register_command
from rlrt_megatron.errors import CommandError, ConfigError

DEFAULT_QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart_cpu.yaml"


def _add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="everything on the console: the engines' and trainer ranks' output (otherwise in "
        "<run_dir>/logs/), Ray's and the libraries' INFO lines",
    )


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at each record (not the object it was at set-up,
    which a test's capture may have closed since)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it: ignored
        pass


class _ConsoleFormatter(logging.Formatter):
    """A phase line as it is; a warning or error prefixed with its level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


def configure_console(verbose: bool) -> None:
    """The run's console (issue 16): quiet shows this package's INFO lines (a few per phase) on
    stdout, other libraries' warnings only (Python's default) and no Hugging Face progress bars
    (the warm-up's "Loading weights" / "Writing model shards"); ``verbose`` shows every
    library's INFO lines, with time and logger name."""
    if verbose:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return
    package = logging.getLogger("rlrt_megatron")
    if not any(isinstance(h.formatter, _ConsoleFormatter) for h in package.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_ConsoleFormatter("%(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO)  # still propagates: a handler on the root sees it too
    # Read by huggingface_hub when transformers is first imported (later in the command).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (a test process): switch them off now
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides, e.g. algorithm.method=grpo trainer.steps=5",
    )
    _add_verbose_argument(parser)


USER_ERROR = 2  # exit status of a bad setting or input, refused before anything started


def _run_train(args: argparse.Namespace) -> int:
    from rlrt_megatron.data.records import DatasetError
    from rlrt_megatron.trainer.config import load_run_config
    from rlrt_megatron.trainer.preemption import PreemptionHandler
    from rlrt_megatron.trainer.preflight import preflight

    try:
        # A pre-emption signal during the checks and imports ends the command cleanly (status
        # 0): nothing has started yet. From `train` on, its own handler takes over.
        with PreemptionHandler() as early:
            config = load_run_config(args.config, args.overrides)
            checked = preflight(config)  # before the heavy imports below and any process
            from rlrt_megatron.trainer.loop import train
        if early.should_stop:
            print(f"rlrt train: {early.received.name} before start-up: nothing was started")
            return 0
        configure_console(args.verbose)
        summary = train(config, checked, verbose=args.verbose)
    except (ConfigError, DatasetError) as error:  # PreflightError is a ConfigError
        raise CommandError(str(error), exit_code=USER_ERROR) from None
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=str(DEFAULT_QUICKSTART), help="quickstart config (default: %(default)s)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides (quickstart.* too)")
    _add_verbose_argument(parser)


def _run_quickstart(args: argparse.Namespace) -> int:
    from rlrt_megatron.trainer.quickstart import run_quickstart

    configure_console(args.verbose)
    try:
        summary = run_quickstart(args.config, args.overrides, verbose=args.verbose)
    except ConfigError as error:
        raise CommandError(str(error)) from None
    keys = (
        "method",
        "steps",
        "train_reward_first",
        "train_reward_last",
        "eval_accuracy_before",
        "eval_accuracy_after",
        "eval_accuracy_delta",
        "eval_accuracy_se",
        "eval_accuracy_z",
        "train_reward_mean_first_10",
        "train_reward_mean_last_10",
        "seconds",
    )
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2, default=str))
    if "eval_accuracy_z" in summary:
        print(
            f"held-out accuracy {100 * summary['eval_accuracy_before']:.1f}% -> "
            f"{100 * summary['eval_accuracy_after']:.1f}% "
            f"({100 * summary['eval_accuracy_delta']:+.1f} points, paired standard error "
            f"{100 * summary['eval_accuracy_se']:.1f}, z = {summary['eval_accuracy_z']:.1f})"
        )
    return 0


register_command(
    "train", "train a policy with RL from a run config", _add_train_arguments, _run_train
)
register_command(
    "quickstart",
    "the CPU quickstart: tiny Qwen3, SFT warm-up, RLRT with the real stack",
    _add_quickstart_arguments,
    _run_quickstart,
)
