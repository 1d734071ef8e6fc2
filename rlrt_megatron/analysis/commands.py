"""``rlrt analyze heatmap|markers|inject|shift|influence``: the paper's analyses as commands.

Each sub-command reads rollouts in ``rlrt score``'s jsonl formats (see
:mod:`rlrt_megatron.analysis.inputs`), starts its TP×PP megatron workers itself, and writes its
outputs into ``--output`` (a folder) atomically. The heavy lifting lives in the per-analysis
modules; this file is argument parsing and file writing. ``inject`` and ``influence`` also start a
Ray cluster and a vLLM engine pool (:func:`rlrt_megatron.analysis.common.open_engine_pool`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rlrt_megatron.analysis.common import correctness
from rlrt_megatron.command_registry import register_command
from rlrt_megatron.errors import CommandError


def read_categories(path: Path | None) -> dict[str, list[str]]:
    """The marker categories: a JSON or YAML mapping {category: [words]} (default: built in)."""
    from rlrt_megatron.analysis.markers import DEFAULT_CATEGORIES

    if path is None:
        return DEFAULT_CATEGORIES
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML ⊃ JSON
    except (OSError, yaml.YAMLError) as error:
        raise CommandError(f"cannot read --categories {path}: {error}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v)
        for k, v in data.items()
    ):
        raise CommandError(f"--categories {path}: expected a mapping of category → list of words")
    return data


def _decoder(tokenizer: Any):
    return lambda i: tokenizer.decode([int(i)])


# ------------------------------------------------------------------------------------ heatmap


def run_heatmap(args: argparse.Namespace) -> int:
    from rlrt_megatron.analysis.heatmap import build_heatmap, render_html, render_png
    from rlrt_megatron.analysis.inputs import (
        load_pairs_for,
        open_model,
        save_figure,
        score_pairs_for,
        write_atomically,
    )

    if args.top < 0 or args.candidates < 4:
        raise CommandError("--top must be >= 0 and --candidates >= 4")
    model = open_model(args.model, args.tp, args.pp)
    trajectories = load_pairs_for(args, model)
    k = min(args.candidates, model.vocab_size)
    views = score_pairs_for(args, model, trajectories, topk=k)
    if views is None:
        return 0
    decode = _decoder(model.tokenizer)
    heatmaps = [
        build_heatmap(t.where, t.request.response_ids, v, decode, top=args.top)
        for t, v in zip(trajectories, views, strict=True)
    ]
    out = args.output
    write_atomically(out / "heatmap.html", render_html(heatmaps, window=args.window))
    data = [
        {
            "where": h.title,
            "tokens": h.pieces,
            "token_ids": t.request.response_ids,
            "kl": h.kl,
            "critical": [
                {
                    "position": c.position,
                    "kl": c.kl,
                    "explore": [vars(x) | {"gap": x.gap} for x in c.explore],
                    "exploit": [vars(x) | {"gap": x.gap} for x in c.exploit],
                }
                for c in h.critical
            ],
        }
        for h, t in zip(heatmaps, trajectories, strict=True)
    ]
    write_atomically(out / "heatmap.json", json.dumps(data, ensure_ascii=False, indent=1))
    for i, heat in enumerate(heatmaps[: args.max_png]):
        save_figure(render_png(heat, window=args.window), out / f"heatmap_{i}.png")
    print(f"wrote {out / 'heatmap.html'} and {min(len(heatmaps), args.max_png)} PNG(s)")
    return 0


def add_heatmap_arguments(parser: argparse.ArgumentParser) -> None:
    from rlrt_megatron.analysis.inputs import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, help="trajectories jsonl (+context)")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--top", type=int, default=5, help="critical positions per trajectory")
    parser.add_argument("--candidates", type=int, default=100, help="top-k of each view (100)")
    parser.add_argument("--window", type=int, default=12, help="tokens each side in zooms")
    parser.add_argument("--max-png", type=int, default=20, help="PNGs for the first N (20)")


# ------------------------------------------------------------------------------------ markers


def run_markers(args: argparse.Namespace) -> int:
    from rlrt_megatron.analysis.inputs import (
        load_pairs_for,
        open_model,
        save_figure,
        score_pairs_for,
        write_atomically,
    )
    from rlrt_megatron.analysis.markers import (
        build_corpora,
        candidate_counts,
        default_stopwords,
        markers_table,
        one_correct_one_incorrect,
        score_markers,
        volcano_plot,
        write_csv,
    )

    categories = read_categories(args.categories)
    model = open_model(args.model, args.tp, args.pp)
    trajectories = load_pairs_for(
        args, model, need=() if args.all_rollouts else ("correct|answer",)
    )
    if not args.all_rollouts:
        correct = correctness(trajectories, model.tokenizer)
        keep = one_correct_one_incorrect([t.problem for t in trajectories], correct)
        if not keep:
            raise CommandError(
                f"{args.data}: no problem has both a correct and an incorrect rollout (use "
                "--all-rollouts to use every line)"
            )
        trajectories = [trajectories[i] for i in keep]
    views = score_pairs_for(args, model, trajectories)
    if views is None:
        return 0
    explore, exploit = build_corpora(
        [v["explore_id"] for v in views],
        [v["exploit_id"] for v in views],
        _decoder(model.tokenizer),
        case_fold=not args.keep_case,
    )
    if args.no_stopwords:
        stop = frozenset()
    else:
        stop = default_stopwords(domain=not args.no_domain_stopwords)
    rows = score_markers(
        explore,
        exploit,
        alpha=args.alpha,
        threshold=args.threshold,
        min_count=args.min_count,
        stopwords=stop,
    )
    out = args.output
    write_atomically(out / "markers.csv", write_csv(rows))
    write_atomically(out / "markers.md", markers_table(rows, categories))
    summary = {
        "rollouts": len(trajectories),
        "positions": sum(len(v["kl"]) for v in views),
        "explore_types": len(explore),
        "exploit_types": len(exploit),
        "kept": sum(r["kept"] for r in rows),
        "candidates": candidate_counts(rows, threshold=args.threshold),
        "alpha": args.alpha,
        "threshold": args.threshold,
        "min_count": args.min_count,
        "case_fold": not args.keep_case,
        "stopwords": len(stop),
    }
    write_atomically(out / "summary.json", json.dumps(summary, indent=1))
    save_figure(volcano_plot(rows, threshold=args.threshold), out / "volcano.png")
    before, after = summary["candidates"]["before_filter"], summary["candidates"]["after_filter"]
    print(
        f"candidates (explore/exploit) {before['explore']}/{before['exploit']} → "
        f"{after['explore']}/{after['exploit']} after filtering; {summary['kept']} markers kept "
        f"of {len(rows)} token types; wrote {out}"
    )
    return 0


def add_markers_arguments(parser: argparse.ArgumentParser) -> None:
    from rlrt_megatron.analysis.inputs import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="rollouts jsonl with context and 'correct' (bool) or 'answer'; 'problem' groups",
    )
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--all-rollouts",
        action="store_true",
        help="use every rollout (default: one correct + one incorrect/problem)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="log-odds smoothing (0.5)")
    parser.add_argument("--threshold", type=float, default=3.0, help="keep |z| >= this (3)")
    parser.add_argument("--min-count", type=int, default=30, help="min total count (30)")
    parser.add_argument("--no-stopwords", action="store_true", help="no stopword filtering")
    parser.add_argument(
        "--no-domain-stopwords",
        action="store_true",
        help="NLTK's English stopwords only (default: also the ~400 math domain words)",
    )
    parser.add_argument(
        "--keep-case",
        action="store_true",
        help="count token types case-sensitively (default: case-folded, as the paper)",
    )
    parser.add_argument(
        "--categories",
        type=Path,
        default=None,
        help="JSON/YAML {category: [words]} for the grouped table",
    )


# -------------------------------------------------------------------------------------- shift


def run_shift(args: argparse.Namespace) -> int:
    import torch

    from rlrt_megatron.analysis.inputs import (
        check_budget,
        load_trajectories,
        open_model,
        save_figure,
        write_atomically,
    )
    from rlrt_megatron.analysis.shift import shift_plot, summarize_shift
    from rlrt_megatron.analysis.views import shift_views_worker
    from rlrt_megatron.megatron.launcher import LaunchTimeout, WorkerError, launch

    if len(args.data) not in (1, len(args.finetuned)):
        raise CommandError(
            f"give one --data file for all, or one per --finetuned ({len(args.finetuned)}); "
            f"got {len(args.data)}"
        )
    if not 1 <= args.topk <= 100:
        raise CommandError(f"--topk must be in [1, 100], got {args.topk}")
    selection = shift_selection(args)
    base = open_model(args.base, args.tp, args.pp)
    summaries: dict[str, dict] = {}
    for index, path in enumerate(args.finetuned):
        finetuned = open_model(path, args.tp, args.pp)
        check_same_vocabulary(finetuned, base)
        data = args.data[0] if len(args.data) == 1 else args.data[index]
        trajectories = load_trajectories(
            data, finetuned, need_teacher=False, raw_prompt=args.raw_prompt
        )
        if selection is not None:
            trajectories = select_trajectories(trajectories, selection["problems"], data)
        check_budget(trajectories, args.max_tokens)
        try:
            results = launch(
                shift_views_worker,
                args.tp * args.pp * args.cp,
                str(finetuned.path),
                str(base.path),
                args.tp,
                args.pp,
                args.dtype,
                [t.request.prompt_ids for t in trajectories],
                [t.request.response_ids for t in trajectories],
                args.topk,
                args.max_tokens,
                args.cp,
                timeout_s=args.timeout,
            )
        except (WorkerError, LaunchTimeout) as error:
            raise CommandError(str(error)) from None
        views = next((v for v in results.values() if v is not None), None)
        if views is None:
            return 0

        def cat(name: str, views=views) -> torch.Tensor:
            return torch.cat([torch.tensor(row) for row in views[name]])

        summary = summarize_shift(
            cat("js"),
            cat("ft_topk_ids"),
            cat("base_topk_ids"),
            cat("base_log_prob_of_ft_top1"),
            js_threshold=args.js_threshold,
        )
        summaries[str(path)] = summary | {"data": str(data), "rollouts": len(trajectories)}
    out = args.output
    report = {"base": str(args.base), "selection": selection, "finetuned": summaries}
    write_atomically(out / "summary.json", json.dumps(report, indent=1))
    save_figure(shift_plot(summaries), out / "shift.png")
    print(f"wrote {out / 'summary.json'} and {out / 'shift.png'}")
    return 0


def shift_selection(args: argparse.Namespace) -> dict | None:
    """The paper's prompt selection (Figure 7) from ``--base-rollouts``: which problems, and how
    they were chosen (written into summary.json); None without ``--base-rollouts``."""
    from rlrt_megatron.analysis.inputs import read_problem_counts
    from rlrt_megatron.analysis.shift import select_problems

    if args.base_rollouts is None:
        print(
            "no --base-rollouts: every rollout of --data is used (the paper selects 30 prompts "
            "with n_correct in {0, 1, 2} of 8 under the base model)"
        )
        return None
    counts = read_problem_counts(args.base_rollouts)
    group_size = args.select_group_size or None
    try:
        problems, eligible = select_problems(
            counts,
            correct=args.select_correct,
            group_size=group_size,
            count=args.select_prompts,
            seed=args.select_seed,
        )
    except ValueError as error:
        raise CommandError(f"--base-rollouts {args.base_rollouts}: {error}") from None
    print(f"selected {len(problems)} of {eligible} eligible problems ({len(counts)} in all)")
    return {
        "base_rollouts": str(args.base_rollouts),
        "n_correct": sorted(args.select_correct),
        "group_size": group_size,
        "requested": args.select_prompts,
        "eligible": eligible,
        "seed": args.select_seed,
        "problems": problems,
    }


def select_trajectories(trajectories: list, problems: list[str], data: Path) -> list:
    """The rollouts of the selected problems; CommandError naming a problem without one."""
    chosen = set(problems)
    kept = [t for t in trajectories if t.problem in chosen]
    missing = chosen - {t.problem for t in kept}
    if missing:
        raise CommandError(
            f"{data}: no rollout of selected problem {sorted(missing)[0]!r} (give rollouts of the "
            "same prompts, with the same 'problem' keys as --base-rollouts)"
        )
    return kept


def check_same_vocabulary(finetuned: Any, base: Any) -> None:
    """Both checkpoints must index the same tokens the same way: CommandError naming both."""
    if finetuned.vocab_size != base.vocab_size:
        raise CommandError(
            f"different vocabularies: {finetuned.path} has {finetuned.vocab_size} logits, "
            f"{base.path} has {base.vocab_size}"
        )
    if finetuned.tokenizer.get_vocab() != base.tokenizer.get_vocab():
        raise CommandError(
            f"different vocabularies: the tokenizers of {finetuned.path} and {base.path} differ"
        )


def add_shift_arguments(parser: argparse.ArgumentParser) -> None:
    from rlrt_megatron.analysis.inputs import add_model_arguments
    from rlrt_megatron.analysis.shift import (
        PAPER_SHIFT_CORRECT,
        PAPER_SHIFT_GROUP_SIZE,
        PAPER_SHIFT_PROMPTS,
    )

    add_model_arguments(parser, model_flag=False)  # --base / --finetuned name the models
    parser.add_argument("--base", type=Path, required=True, help="the base checkpoint")
    parser.add_argument(
        "--finetuned",
        type=Path,
        nargs="+",
        required=True,
        help="fine-tuned checkpoint(s), overlaid",
    )
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="the fine-tuned model's rollouts (one file, or one per checkpoint)",
    )
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--js-threshold", type=float, default=0.1, help="shifted: JS > this")
    parser.add_argument("--topk", type=int, default=20, help="top-k overlap up to k (20)")
    parser.add_argument(
        "--base-rollouts",
        type=Path,
        default=None,
        help="the base model's graded rollouts (`rlrt analyze rollouts --model BASE`): select "
        "the prompts as the paper (default: every rollout of --data)",
    )
    parser.add_argument(
        "--select-prompts",
        type=int,
        default=PAPER_SHIFT_PROMPTS,
        help="how many prompts to select (paper: 30; 0: all eligible)",
    )
    parser.add_argument(
        "--select-correct",
        type=int,
        nargs="+",
        default=list(PAPER_SHIFT_CORRECT),
        help="eligible: n_correct under the base model in these (paper: 0 1 2)",
    )
    parser.add_argument(
        "--select-group-size",
        type=int,
        default=PAPER_SHIFT_GROUP_SIZE,
        help="base rollouts per prompt the counts refer to (paper: 8; 0: any)",
    )
    parser.add_argument(
        "--select-seed", type=int, default=0, help="seed of the uniform draw among eligible"
    )


# ------------------------------------------------------------------------------ registration

_ANALYSES = {
    "heatmap": ("D̄_t heatmap of trajectories (HTML + PNG)", add_heatmap_arguments, run_heatmap),
    "markers": (
        "explore/exploit marker tokens (CSV, table, volcano plot)",
        add_markers_arguments,
        run_markers,
    ),
    "shift": (
        "distribution shift of fine-tuned checkpoints vs the base",
        add_shift_arguments,
        run_shift,
    ),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlrt_megatron.analysis.engine_analyses import add_inject_arguments, run_inject
    from rlrt_megatron.analysis.influence import add_influence_arguments, run_influence_command
    from rlrt_megatron.analysis.rollouts import add_rollouts_arguments, run_rollouts

    analyses = (
        {
            "rollouts": (
                "sample K graded rollouts per prompt with peer contexts (input of the others)",
                add_rollouts_arguments,
                run_rollouts,
            )
        }
        | dict(_ANALYSES)
        | {
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
    )
    sub = parser.add_subparsers(dest="analysis", metavar="<analysis>", title="analyses")
    for name, (help_text, add, run) in analyses.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_analysis=run)


def _run(args: argparse.Namespace) -> int:
    run = getattr(args, "_analysis", None)
    if run is None:
        raise CommandError(
            "choose an analysis: rollouts, heatmap, markers, inject, shift or influence"
        )
    return run(args)


register_command(
    "analyze",
    "the paper's analyses: D̄_t heatmaps, explore/exploit markers, reflection injection, "
    "distribution shift, Theorem-2 check",
    _add_arguments,
    _run,
)
