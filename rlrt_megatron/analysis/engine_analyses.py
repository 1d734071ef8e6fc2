"""``rlrt analyze inject``: reflection injection, then continued generation.

**Reflection injection** (paper Figure 6). For each rollout, D̄_t is scored with the
context-conditioned teacher — a correct peer rollout where the line gives one, else (the paper's
"feeding a known correct solution c") the teacher that has seen the problem's known solution
(``--no-ground-truth-teacher`` leaves such rollouts to ``--skip-without-context`` / an error);
the reflection string is inserted *before* the token at argmax_t D̄_t ("max_kl"), at a uniformly
random position ("random") and at argmin_t D̄_t ("min_kl"); the engine continues from
prompt ⊕ y_<t ⊕ reflection, the result (y_<t ⊕ reflection ⊕ continuation) is graded with the
math reward. Problems are *hard* / *easy* by their number of correct rollouts out of K, as the
paper: hard = {0, 1, 2} of 8, easy = {5, 6, 7} of 8 (``--hard-correct``, ``--easy-correct``,
``--group-size``); the report gives the wrong→right rate on the wrong rollouts of hard problems
and the right→wrong rate on the right rollouts of easy ones, with Wilson 95% intervals
(:func:`rlrt_megatron.analysis.injection.flip_rates`).

"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlrt_megatron.analysis import common
from rlrt_megatron.analysis.common import (
    correctness,
    engine_max_len,
    grade_answers,
    sampling_config,
)
from rlrt_megatron.analysis.injection import (
    PAPER_EASY_CORRECT,
    PAPER_GROUP_SIZE,
    PAPER_HARD_CORRECT,
    InjectionOutcome,
    check_subsets,
    flip_rates,
    problem_subset,
)
from rlrt_megatron.errors import CommandError

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


def injection_counts(
    trajectories: Sequence[Any], correct: Sequence[bool]
) -> dict[str, tuple[int, int]]:
    """{problem: (correct rollouts, rollouts)}: counted in the file, except where a line gives
    ``problem_correct`` and ``problem_rollouts`` (``rlrt analyze rollouts`` writes the counts
    of all K sampled rollouts, including any it could not write out)."""
    counts = problem_counts([t.problem for t in trajectories], correct)
    for t in trajectories:
        record = getattr(t, "record", {})
        if "problem_correct" in record and "problem_rollouts" in record:
            counts[t.problem] = (int(record["problem_correct"]), int(record["problem_rollouts"]))
    return counts


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
    grade = grade or grade_answers
    rng = random.Random(seed)
    counts = injection_counts(trajectories, correct)
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
    results = pool.generate(prompts, sampling_config(samples, max_new_tokens, temperature, seed))
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
                teacher=getattr(t, "teacher", None),
                text=text,
            )
        )
    return outcomes, records


# ------------------------------------------------------------------------------- commands


def _correct_and_answers(trajectories: Sequence[Any], tokenizer: Any) -> tuple[list, list]:
    answers = [str(t.record["answer"]) for t in trajectories]
    return correctness(list(trajectories), tokenizer), answers


def run_inject(args: argparse.Namespace) -> int:
    from rlrt_megatron.analysis.inputs import (
        load_pairs_for,
        open_model,
        save_figure,
        score_pairs_for,
        write_atomically,
    )

    subsets = injection_subsets(args)
    table: dict[str, dict] = {}
    lines = []
    for path in args.model:
        model = open_model(path, args.tp, args.pp)
        trajectories = load_pairs_for(
            args, model, need=("answer",), ground_truth_teacher=not args.no_ground_truth_teacher
        )
        from_truth = sum(t.teacher == "ground_truth" for t in trajectories)
        if from_truth:
            print(f"{args.data}: {from_truth} rollouts scored with a ground-truth teacher")
        correct, answers = _correct_and_answers(trajectories, model.tokenizer)
        if "group_size" in subsets:  # fail before any scoring when a problem has another K
            for problem, (n_correct, n) in injection_counts(trajectories, correct).items():
                try:
                    problem_subset(n_correct, n, problem=problem, **subsets)
                except ValueError as error:
                    raise CommandError(f"{args.data}: {error}") from None
        views = score_pairs_for(args, model, trajectories)
        if views is None:
            return 0
        reflection_len = len(model.tokenizer.encode(" " + args.reflection))
        length = engine_max_len(
            trajectories, reflection_len + args.max_new_tokens, model.max_positions
        )
        with common.open_engine_pool(
            model.path, max_model_len=length, engines=args.engines
        ) as pool:
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
        try:
            table[str(path)] = flip_rates(outcomes, **subsets)
        except ValueError as error:
            raise CommandError(f"{args.data}: {error}") from None
        lines += [json.dumps(r | {"model": str(path)}, ensure_ascii=False) for r in records]
    out = args.output
    write_atomically(out / "continuations.jsonl", "".join(line + "\n" for line in lines))
    write_atomically(out / "flip_rates.json", json.dumps(table, indent=1))
    write_atomically(out / "flip_rates.md", injection_table(table))
    save_figure(injection_plot(table), out / "flip_rates.png")
    print(f"wrote {out / 'flip_rates.md'} and {out / 'flip_rates.png'}")
    return 0


def injection_subsets(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`flip_rates` from the command line (checked)."""
    if (args.hard_max is None) != (args.easy_min is None):
        raise CommandError("give both --hard-max and --easy-min (the fraction rule), or neither")
    if args.hard_max is not None:
        if not 0 <= args.hard_max < args.easy_min <= 1:
            raise CommandError("need 0 <= --hard-max < --easy-min <= 1")
        return {"hard_max_fraction": args.hard_max, "easy_min_fraction": args.easy_min}
    group_size = args.group_size or None
    try:
        check_subsets(args.hard_correct, args.easy_correct, group_size)
    except ValueError as error:
        raise CommandError(f"--hard-correct/--easy-correct/--group-size: {error}") from None
    return {
        "hard_correct": tuple(args.hard_correct),
        "easy_correct": tuple(args.easy_correct),
        "group_size": group_size,
    }


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
    parser.add_argument(
        "--hard-correct",
        type=int,
        nargs="+",
        default=list(PAPER_HARD_CORRECT),
        help="hard problems: these numbers of correct rollouts (paper: 0 1 2)",
    )
    parser.add_argument(
        "--easy-correct",
        type=int,
        nargs="+",
        default=list(PAPER_EASY_CORRECT),
        help="easy problems: these numbers of correct rollouts (paper: 5 6 7)",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=PAPER_GROUP_SIZE,
        help="rollouts per problem the counts refer to; a problem with another K is an error "
        "(paper: 8; 0: any K)",
    )
    parser.add_argument(
        "--hard-max",
        type=float,
        default=None,
        help="select by fraction instead (not the paper's rule): hard = fraction correct <= this",
    )
    parser.add_argument(
        "--easy-min",
        type=float,
        default=None,
        help="with --hard-max: easy = fraction correct >= this",
    )
    parser.add_argument(
        "--no-ground-truth-teacher",
        action="store_true",
        help="no ground-truth teacher for rollouts without a correct peer (default: the "
        "teacher sees the known solution, as the paper)",
    )
