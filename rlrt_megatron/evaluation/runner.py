"""Sampling and grading benchmark problems, chunk by chunk, into a resumable output folder.

Seeds: the samples of problem ``i`` are drawn by one engine request seeded ``seed + i`` (chunks
are contiguous runs of problem indices and `SamplingConfig` seeds prompt ``j`` of a batch with
``seed + j``), so they do not depend on the chunk size, the number of engines, or on which run of
a resumed evaluation produced them (up to the engine's own batch-dependent numerics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrt_megatron.data.templating import encode_chat
from rlrt_megatron.evaluation.benchmarks import Benchmark, Problem
from rlrt_megatron.evaluation.results import compute_results, write_results
from rlrt_megatron.evaluation.store import (
    append_samples,
    finished_problems,
    load_samples,
)
from rlrt_megatron.rewards.math_verifier import extract_answer_line, extract_last_boxed
from rlrt_megatron.rollout.sampling import SamplingConfig

# The paper's evaluation sampling and length limit (Table 1 / DESIGN.md §1): T 0.7, top-p 0.8,
# top-k 20 are Qwen3's recommended settings for non-thinking mode (its thinking-mode ones are
# T 0.6, top-p 0.95, top-k 20); up to 38912 response tokens.
PAPER_TEMPERATURE, PAPER_TOP_P, PAPER_TOP_K, PAPER_MAX_TOKENS = 0.7, 0.8, 20, 38912


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What decides the samples of an evaluation (all recorded in settings.json)."""

    n: int = 16
    """Samples per problem."""
    temperature: float = PAPER_TEMPERATURE
    top_p: float = PAPER_TOP_P
    top_k: int = PAPER_TOP_K
    max_tokens: int = PAPER_MAX_TOKENS
    seed: int = 0
    enable_thinking: bool | None = None
    """Qwen3 chat template's ``enable_thinking``; None: the template's default."""
    reward: str = "math"
    """The registered reward that grades (`rlrt_megatron.rewards.reward_names`)."""

    def sampling(self, first_problem: int) -> SamplingConfig:
        """Sampling for a chunk starting at problem index ``first_problem``."""
        return SamplingConfig(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            seed=self.seed + first_problem,
        )

    def settings(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "enable_thinking": self.enable_thinking,
            "reward": self.reward,
        }


def extract_for(reward: str) -> Callable[[str], str | None]:
    """The answer extraction the reward ``reward`` grades (boxed; DAPO also its Answer: line)."""
    if reward == "math_dapo":
        return lambda text: (
            a if (a := extract_last_boxed(text)) is not None else extract_answer_line(text)
        )
    return extract_last_boxed


@dataclass(frozen=True)
class PromptedProblem:
    benchmark: Benchmark
    problem: Problem
    ids: list[int]


def encode_benchmarks(
    benchmarks: Sequence[Benchmark], tokenizer: Any, enable_thinking: bool | None
) -> list[PromptedProblem]:
    """Every problem with its prompt token ids (the model's own chat template)."""
    return [
        PromptedProblem(b, p, encode_chat(tokenizer, p.messages, enable_thinking=enable_thinking))
        for b in benchmarks
        for p in b.problems
    ]


# Why a too-short model is refused rather than evaluated with a lower cap (issue 14, item 8).
LENGTH_REASON = (
    f"the paper evaluates with up to {PAPER_MAX_TOKENS} response tokens after the prompt, and a "
    "silently lower cap would truncate long answers and change avg@n / pass@n. To run the "
    "paper's setting, use a checkpoint whose config.json allows the length (e.g. Qwen3's "
    "documented YaRN rope_scaling with max_position_embeddings raised to match); a lower cap "
    "is a departure from the paper and must be asked for explicitly"
)


def check_prompt_lengths(prompted: Sequence[PromptedProblem], max_tokens: int, limit: int) -> None:
    """Raise ValueError naming the longest prompt if prompt + ``max_tokens`` exceeds ``limit``
    (never lowers the cap: `LENGTH_REASON`)."""
    worst = max(prompted, key=lambda p: len(p.ids))
    if len(worst.ids) + max_tokens > limit:
        raise ValueError(
            f"{worst.benchmark.path}: problem {worst.problem.index} has a {len(worst.ids)}-token"
            f" prompt; with --max-tokens {max_tokens} that exceeds the model length {limit}."
            f" Refused: {LENGTH_REASON} (--max-tokens at most {limit - len(worst.ids)})"
        )


def check_eval_length(
    max_prompt_tokens: int, max_tokens: int, max_positions: int | None, model: str
) -> None:
    """Raise ValueError if a prompt of ``max_prompt_tokens`` plus ``max_tokens`` response tokens
    does not fit the model's ``max_positions`` (``max_position_embeddings``; None: unknown)."""
    needed = max_prompt_tokens + max_tokens
    if max_positions is not None and needed > max_positions:
        raise ValueError(
            f"{model}: evaluation needs prompt ({max_prompt_tokens}) + {max_tokens} response "
            f"tokens = {needed} positions, but its max_position_embeddings is {max_positions}. "
            f"Refused: {LENGTH_REASON} (eval.max_response_tokens)"
        )


def settings_for(
    config: EvalConfig, benchmarks: Sequence[Benchmark], **extra: Any
) -> dict[str, Any]:
    """settings.json's content: ``extra`` (model, dtype, label) + sampling + benchmark digests."""
    return {
        **extra,
        **config.settings(),
        "benchmarks": {
            b.name: {"file": str(b.path), "problems": len(b.problems), "digest": b.digest()}
            for b in benchmarks
        },
    }


def pending_problems(
    prompted: Sequence[PromptedProblem], output: Path, n: int
) -> tuple[list[PromptedProblem], list[dict[str, Any]]]:
    """The problems still to sample, and the samples already in ``output`` (complete problems)."""
    samples = load_samples(output, n)
    done = finished_problems(samples)
    todo = [p for p in prompted if (p.benchmark.name, p.problem.index) not in done]
    return todo, samples


def chunks(todo: Sequence[PromptedProblem], size: int) -> list[list[PromptedProblem]]:
    """Runs of at most ``size`` problems of one benchmark with consecutive indices (so that one
    batch seed gives every problem its own seed, see the module doc)."""
    out: list[list[PromptedProblem]] = []
    for p in todo:
        last = out[-1][-1] if out else None
        if (
            last is not None
            and len(out[-1]) < size
            and last.benchmark.name == p.benchmark.name
            and last.problem.index + 1 == p.problem.index
        ):
            out[-1].append(p)
        else:
            out.append([p])
    return out


def sample_and_grade(
    chunk: Sequence[PromptedProblem], engines: Any, rewards: Any, config: EvalConfig
) -> list[dict[str, Any]]:
    """``config.n`` graded samples per problem of ``chunk``, as samples.jsonl rows.

    ``engines``: anything with ``generate(prompt_ids, sampling) -> [[Sample] * n] * P`` (the
    engine pool); ``rewards``: a `RewardPool`.
    """
    groups = engines.generate([p.ids for p in chunk], config.sampling(chunk[0].problem.index))
    flat = [(p, i, s) for p, group in zip(chunk, groups, strict=True) for i, s in enumerate(group)]
    graded = rewards.grade([s.text for _, _, s in flat], [p.problem.answer for p, _, _ in flat])
    extract = extract_for(config.reward)
    return [
        {
            "benchmark": p.benchmark.name,
            "problem_index": p.problem.index,
            "sample_index": i,
            "response": s.text,
            "extracted_answer": extract(s.text),
            "correct": score >= 1.0,
            "answer": p.problem.answer,
            "grade_status": status,
            "finish_reason": s.finish_reason,
            "num_tokens": len(s.token_ids),
        }
        for (p, i, s), score, status in zip(flat, graded.scores, graded.statuses, strict=True)
    ]


def run_chunks(
    todo: Sequence[PromptedProblem],
    engines: Any,
    rewards: Any,
    config: EvalConfig,
    output: Path,
    *,
    chunk_size: int = 32,
    total: int | None = None,
    progress: bool = True,
) -> int:
    """Sample, grade and append ``todo`` chunk by chunk (durable after each); returns the number
    of problems done. The progress bar counts problems out of ``total`` (default: ``todo``)."""
    from tqdm import tqdm

    total = len(todo) if total is None else total
    with tqdm(total=total, initial=total - len(todo), unit="problem", disable=not progress) as bar:
        for chunk in chunks(todo, chunk_size):
            bar.set_description(chunk[0].benchmark.name)
            append_samples(output, sample_and_grade(chunk, engines, rewards, config))
            bar.update(len(chunk))
    return len(todo)


def finish_results(output: Path, settings: dict[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """Write results.json for every benchmark of the folder whose samples are all there."""
    n = settings["n"]
    samples = load_samples(output, n)
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["benchmark"]] = counts.get(s["benchmark"], 0) + 1
    names = [
        name
        for name, info in settings["benchmarks"].items()
        if counts.get(name, 0) == info["problems"] * n
    ]
    results = compute_results(samples, names, n, ks)
    write_results(output, results)
    return results
