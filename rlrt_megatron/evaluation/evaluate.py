"""`evaluate_model`: the whole of ``rlrt eval`` as a function.

Everything that can be wrong with the inputs (model folder, tokenizer, benchmark rows, k > n,
prompt lengths, a resumed folder with other settings) is checked before Ray or an engine starts.
The output folder then holds::

    settings.json    what decided the samples (refused on resume if different) and the label
    samples.jsonl    one line per sample, appended per chunk of problems (resumable)
    results.json     {"benchmarks": {name: {"n", "avg@n", "pass@n", "pass@k": {k: ...}}}} (%)
    results.md       the Table 1-style markdown table (this checkpoint + overlays)
    pass_at_k.png    pass@k curves, log-x (this checkpoint + overlays)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrt_megatron.evaluation.benchmarks import read_benchmarks
from rlrt_megatron.evaluation.model import resolve_eval_model
from rlrt_megatron.evaluation.plots import plot_pass_at_k
from rlrt_megatron.evaluation.results import TABLE_FILE, check_ks, markdown_table, read_results
from rlrt_megatron.evaluation.runner import (
    EvalConfig,
    check_prompt_lengths,
    encode_benchmarks,
    finish_results,
    pending_problems,
    run_chunks,
    settings_for,
)
from rlrt_megatron.evaluation.store import check_or_write_settings

PLOT_FILE = "pass_at_k.png"


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """How to run the engines (does not change the samples' distribution, except ``dtype``)."""

    num_engines: int = 1
    tensor_parallel: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    """None: the longest prompt + max_tokens, capped by the model's max_position_embeddings."""
    cpus_per_engine: float = 1.0
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 256


def evaluate_model(
    model: str | Path,
    data: Sequence[str | Path],
    output: str | Path,
    config: EvalConfig,
    *,
    engine: EngineSettings | None = None,
    label: str | None = None,
    ks: Sequence[int] | None = None,
    overlays: Sequence[str | Path] = (),
    chunk_size: int = 32,
    reward_workers: int = 2,
    reward_timeout_s: float = 10.0,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    engines: Any | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the benchmark files ``data``; returns results.json's content.

    ``engines``: an already running engine pool serving this model (tests, notebooks); by
    default one is started here (and Ray with it) and shut down at the end.
    """
    from rlrt_megatron.data.prompts import load_tokenizer

    engine = engine or EngineSettings()
    output = Path(output)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    folder = resolve_eval_model(model)
    ks = check_ks(ks, config.n)
    overlay_rows = [read_results(Path(o)) for o in overlays]
    config.sampling(0)  # validates the sampling values before anything is written
    benchmarks = read_benchmarks(list(data))
    tokenizer = load_tokenizer(folder)
    prompted = encode_benchmarks(benchmarks, tokenizer, config.enable_thinking)
    max_positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    limit = min(engine.max_model_len or max_positions, max_positions)
    check_prompt_lengths(prompted, config.max_tokens, limit)
    max_model_len = engine.max_model_len or min(
        max_positions, max(len(p.ids) for p in prompted) + config.max_tokens
    )
    label = label or _default_label(Path(model), folder)
    settings = check_or_write_settings(
        output,
        settings_for(
            config, benchmarks, model=str(folder.resolve()), dtype=engine.dtype, label=label
        ),
    )
    todo, _ = pending_problems(prompted, output, config.n)
    if todo:
        from rlrt_megatron.rewards.pool import RewardPool

        with (
            RewardPool(config.reward, num_workers=reward_workers, timeout_s=reward_timeout_s) as rw,
            _engines(
                engines, folder, engine, max_model_len, config.seed, ray_address, num_cpus
            ) as pool,
        ):
            run_chunks(
                todo,
                pool,
                rw,
                config,
                output,
                chunk_size=chunk_size,
                total=len(prompted),
                progress=progress,
            )
    results = finish_results(output, settings, ks)
    write_report(output, [(label, results), *overlay_rows])
    return results


def write_report(output: Path, rows: Sequence[tuple[str, dict[str, Any]]]) -> tuple[Path, Path]:
    """results.md and pass_at_k.png for ``rows`` ((label, results) pairs, this one first)."""
    table = output / TABLE_FILE
    table.write_text(markdown_table(rows))
    return table, plot_pass_at_k(rows, output / PLOT_FILE)


def _default_label(given: Path, folder: Path) -> str:
    """``parent/run/step_N`` for a training checkpoint (``rlrt/seed0/step_80`` in a comparison),
    else the folder's name."""
    if folder.name == "hf" and folder.parent.name.startswith("step_"):
        run = folder.resolve().parent.parent.parent  # run/checkpoints/step_N/hf
        return f"{run.parent.name}/{run.name}/{folder.parent.name}"
    return given.resolve().name


@contextmanager
def _engines(
    given: Any | None,
    folder: Path,
    engine: EngineSettings,
    max_model_len: int,
    seed: int,
    ray_address: str | None,
    num_cpus: int | None,
) -> Iterator[Any]:
    """``given`` as it is, or a pool started here (and shut down on exit)."""
    if given is not None:
        yield given
        return
    from rlrt_megatron.cluster import EnginePool, EnginePoolConfig, RayConfig, init_ray
    from rlrt_megatron.rollout import EngineConfig

    init_ray(RayConfig(address=ray_address, num_cpus=num_cpus))
    with EnginePool(
        EnginePoolConfig(
            engine=EngineConfig(
                model_path=str(folder),
                max_model_len=max_model_len,
                dtype=engine.dtype,
                tensor_parallel_size=engine.tensor_parallel,
                seed=seed,
                gpu_memory_utilization=engine.gpu_memory_utilization,
                max_num_seqs=engine.max_num_seqs,
            ),
            num_engines=engine.num_engines,
            cpus_per_engine=engine.cpus_per_engine,
        )
    ) as pool:
        yield pool
