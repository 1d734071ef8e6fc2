"""``rlrt analyze inject`` (and the engine plumbing ``influence`` shares): continued generation.

**Reflection injection** (paper Figure 6). For each rollout, D̄_t is scored with the
context-conditioned teacher; the reflection string is inserted *before* the token at
argmax_t D̄_t ("max_kl"), at a uniformly random position ("random") and at argmin_t D̄_t
("min_kl"); the engine continues from prompt ⊕ y_<t ⊕ reflection, the result
(y_<t ⊕ reflection ⊕ continuation) is graded with the math reward. Problems are *hard* when at
most ``hard_max_fraction`` of their rollouts in the file are correct (default 1/4) and *easy*
when at least ``easy_min_fraction`` are (default 3/4); the report gives the wrong→right rate on
the wrong rollouts of hard problems and the right→wrong rate on the right rollouts of easy ones,
with Wilson 95% intervals (:func:`rlrt_megatron.analysis.injection.flip_rates`).

"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rlrt_megatron.analysis.injection import InjectionOutcome, flip_rates
from rlrt_megatron.cli import CommandError

KINDS = ("max_kl", "random", "min_kl")


def choose_positions(kl: Sequence[float], rng: random.Random) -> dict[str, int]:
    """Insertion positions of one rollout: argmax_t D̄_t, a uniform t, argmin_t D̄_t (ties: the
    first)."""
    if not kl:
        raise ValueError("empty response")
    return {
        "max_kl": max(range(len(kl)), key=lambda t: (kl[t], -t)),
        "random": rng.randrange(len(kl)),
        "min_kl": min(range(len(kl)), key=lambda t: (kl[t], t)),
    }


def problem_counts(problems: Sequence[str], correct: Sequence[bool]) -> dict[str, tuple[int, int]]:
    """{problem: (correct rollouts, rollouts)}."""
    counts: dict[str, list[int]] = {}
    for p, c in zip(problems, correct, strict=True):
        entry = counts.setdefault(p, [0, 0])
        entry[0] += int(c)
        entry[1] += 1
    return {p: (c, n) for p, (c, n) in counts.items()}


# --------------------------------------------------------------------------- engine plumbing


@contextlib.contextmanager
def open_engine_pool(model_path: Path, *, max_model_len: int, engines: int) -> Iterator[Any]:
    """A Ray cluster (joined or local) and an engine pool serving ``model_path`` in float32."""
    from rlrt_megatron.cluster import EnginePool, EnginePoolConfig, init_ray
    from rlrt_megatron.rollout import EngineConfig

    init_ray()
    config = EnginePoolConfig(
        engine=EngineConfig(
            model_path=str(model_path), dtype="float32", max_model_len=max_model_len
        ),
        num_engines=engines,
        cpus_per_engine=0.9,
    )
    with EnginePool(config) as pool:
        yield pool


def _sampling(n: int, max_tokens: int, temperature: float, seed: int):
    from rlrt_megatron.rollout import SamplingConfig

    return SamplingConfig(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)


def run_injection(
    pool: Any,
    tokenizer: Any,
    trajectories: Sequence[Any],
    kls: Sequence[Sequence[float]],
    correct: Sequence[bool],
    answers: Sequence[str],
    *,
    reflection: str = "Wait, let me reconsider.",
    max_new_tokens: int = 256,
    samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    grade=None,
) -> tuple[list[InjectionOutcome], list[dict]]:
    """Insert, continue, grade (see the module docstring). Returns the outcomes (one per rollout,
    kind and sample) and a record per continuation for the output jsonl."""
    from rlrt_megatron.analysis.commands import grade_answers

    grade = grade or grade_answers
    rng = random.Random(seed)
    counts = problem_counts([t.problem for t in trajectories], correct)
    for t in trajectories:  # K and correct-of-K given by `rlrt analyze rollouts` take precedence
        record = getattr(t, "record", {})
        if "problem_correct" in record and "problem_rollouts" in record:
            counts[t.problem] = (int(record["problem_correct"]), int(record["problem_rollouts"]))
    prompts, meta = [], []
    for i, (t, kl) in enumerate(zip(trajectories, kls, strict=True)):
        response = t.request.response_ids
        for kind, pos in choose_positions(kl, rng).items():
            prefix = response[:pos]
            before = tokenizer.decode(prefix)
            text = reflection if not before or before[-1].isspace() else " " + reflection
            injected = prefix + list(tokenizer.encode(text, add_special_tokens=False))
            prompts.append(list(t.request.prompt_ids) + injected)
            meta.append((i, kind, pos, injected))
    results = pool.generate(prompts, _sampling(samples, max_new_tokens, temperature, seed))
    texts, rows = [], []
    for (i, kind, pos, injected), group in zip(meta, results, strict=True):
        for sample in group:
            texts.append(tokenizer.decode(injected + list(sample.token_ids)))
            rows.append((i, kind, pos))
    graded = grade(texts, [answers[i] for i, _, _ in rows])
    outcomes, records = [], []
    for (i, kind, pos), text, ok in zip(rows, texts, graded, strict=True):
        t = trajectories[i]
        n_correct, n = counts[t.problem]
        outcomes.append(
            InjectionOutcome(
                problem_id=t.problem,
                position_kind=kind,
                correct_before=correct[i],
                correct_after=ok,
                problem_correct=n_correct,
                problem_rollouts=n,
            )
        )
        records.append(
            dict(
                where=t.where,
                problem=t.problem,
                kind=kind,
                position=pos,
                kl=kls[i][pos],
                correct_before=correct[i],
                correct_after=ok,
                problem_correct=n_correct,
                problem_rollouts=n,
                text=text,
            )
        )
    return outcomes, records


# ------------------------------------------------------------------------------- commands


def _correct_and_answers(trajectories: Sequence[Any], tokenizer: Any) -> tuple[list, list]:
    from rlrt_megatron.analysis.commands import _correctness

    answers = [str(t.record["answer"]) for t in trajectories]
    return _correctness(list(trajectories), tokenizer), answers


def engine_max_len(trajectories: Sequence[Any], extra: int, limit: int) -> int:
    longest = max(len(t.request.prompt_ids) + len(t.request.response_ids) for t in trajectories)
    return min(limit, longest + extra)


def run_inject(args: argparse.Namespace) -> int:
    from rlrt_megatron.analysis.inputs import (
        load_pairs_for,
        open_model,
        save_figure,
        score_pairs_for,
        write_atomically,
    )

    if not 0 <= args.hard_max < args.easy_min <= 1:
        raise CommandError("need 0 <= --hard-max < --easy-min <= 1")
    table: dict[str, dict] = {}
    lines = []
    for path in args.model:
        model = open_model(path, args.tp, args.pp)
        trajectories = load_pairs_for(args, model, need=("answer",))
        correct, answers = _correct_and_answers(trajectories, model.tokenizer)
        views = score_pairs_for(args, model, trajectories)
        if views is None:
            return 0
        reflection_len = len(model.tokenizer.encode(" " + args.reflection))
        length = engine_max_len(
            trajectories, reflection_len + args.max_new_tokens, model.max_positions
        )
        with open_engine_pool(model.path, max_model_len=length, engines=args.engines) as pool:
            outcomes, records = run_injection(
                pool,
                model.tokenizer,
                trajectories,
                [v["kl"] for v in views],
                correct,
                answers,
                reflection=args.reflection,
                max_new_tokens=args.max_new_tokens,
                samples=args.samples,
                temperature=args.temperature,
                seed=args.seed,
            )
        table[str(path)] = flip_rates(
            outcomes, hard_max_fraction=args.hard_max, easy_min_fraction=args.easy_min
        )
        lines += [json.dumps(r | {"model": str(path)}, ensure_ascii=False) for r in records]
    out = args.output
    write_atomically(out / "continuations.jsonl", "".join(line + "\n" for line in lines))
    write_atomically(out / "flip_rates.json", json.dumps(table, indent=1))
    write_atomically(out / "flip_rates.md", injection_table(table))
    save_figure(injection_plot(table), out / "flip_rates.png")
    print(f"wrote {out / 'flip_rates.md'} and {out / 'flip_rates.png'}")
    return 0


def injection_table(table: dict[str, dict]) -> str:
    """Markdown: per model and insertion kind, both flip rates with 95% intervals and counts."""
    lines = [
        "| model | inserted at | wrong→right (hard) | n | right→wrong (easy) | n |",
        "|---|---|---|---|---|---|",
    ]
    for model, kinds in table.items():
        for kind in KINDS:
            r = kinds.get(kind)
            if r is None:
                continue
            lines.append(
                f"| {model} | {kind} | {_rate(r, 'wrong_to_right')} | {r['hard_wrong_rollouts']} "
                f"| {_rate(r, 'right_to_wrong')} | {r['easy_right_rollouts']} |"
            )
    return "\n".join(lines) + "\n"


def _rate(r: dict, key: str) -> str:
    if math.isnan(r[key]):
        return "—"
    return f"{r[key]:.3f} [{r[key + '_ci_low']:.3f}, {r[key + '_ci_high']:.3f}]"


def injection_plot(table: dict[str, dict]):
    """Figure 6: per insertion kind, the flip rates (95% intervals) of each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(table), 1)
    for m, (model, kinds) in enumerate(table.items()):
        for ax, key in zip(axes, ("wrong_to_right", "right_to_wrong"), strict=True):
            xs, ys, err = [], [], [[], []]
            for k, kind in enumerate(KINDS):
                r = kinds.get(kind)
                if r is None or math.isnan(r[key]):
                    continue
                xs.append(k + m * width)
                ys.append(r[key])
                err[0].append(max(0.0, r[key] - r[key + "_ci_low"]))  # rounding
                err[1].append(max(0.0, r[key + "_ci_high"] - r[key]))
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=Path(model).name or model)
    for ax, title in zip(
        axes, ("wrong→right on hard problems", "right→wrong on easy problems"), strict=True
    ):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(KINDS))], KINDS)
        ax.set(ylim=(0, 1), ylabel="flip rate (95% Wilson CI)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def add_inject_arguments(parser: argparse.ArgumentParser) -> None:
    from rlrt_megatron.analysis.inputs import add_model_arguments

    add_model_arguments(parser, models=True)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="rollouts jsonl with context and answer (K per problem)",
    )
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--reflection", default="Wait, let me reconsider.")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=1, help="continuations per insertion")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", type=int, default=1, help="vLLM engines")
    parser.add_argument("--hard-max", type=float, default=0.25, help="hard: fraction correct <=")
    parser.add_argument("--easy-min", type=float, default=0.75, help="easy: fraction correct >=")


from rlrt_megatron.analysis.influence import (  # noqa: E402  (it imports this module's helpers)
    add_influence_arguments,
    run_influence_command,
)

ANALYSES = {
    "inject": (
        "reflection injection at max/random/min D̄_t: flip rates (Figure 6)",
        add_inject_arguments,
        run_inject,
    ),
    "influence": (
        "Theorem-2 check: Monte-Carlo influence vs D̄_t (an estimate)",
        add_influence_arguments,
        run_influence_command,
    ),
}
