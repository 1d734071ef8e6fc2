"""rlrt-megatron against TRL's GRPOTrainer on the fixed workloads of ../shared/bench/WORKLOAD.md.

    make bench-trl                                  # both workloads (tiny, then medium)
    .venv/bin/python benchmarks/vs_trl.py --quick   # the tiny workload alone

For each workload it builds the data, tokenizer and model with this project's code
(`trl_bench/workload.py`), then runs TRL (in ``.venv-bench``, which `make bench-trl` creates:
CPU torch first, then TRL 1.16.0, never in ``.venv``) and `rlrt train` (grpo) one after the
other on this machine (`trl_bench/runners.py`), and prints per workload and system: median
s/step over steps 3–N, median generated tok/s, peak memory, start-up time, the median phase
split, and the ratio TRL s/step ÷ rlrt s/step (> 1: rlrt-megatron is faster). A third row runs
`rlrt train` with ``rollout.mode=one_step_off`` (step t+1 generates while step t updates; it
needs disaggregated placement), reported beside the others: on two shared cores the engine and
the trainer compete for the same cores, so the overlap buys little there (its payoff is on
GPUs with engines on their own devices). ``--no-one-step-off`` skips it. A fourth row,
``rlrt_in_rank``, runs `rlrt train` with ``rollout.backend=in_rank`` (sync mode: the trainer rank
generates with its own weights, no vLLM engine and no weight sync; the backend for small
models); ``--no-in-rank`` skips it.

``--rlrt-variant LABEL=KEY=VALUE[,KEY=VALUE...]`` (repeatable) adds a row: `rlrt train` with
those config overrides, run in the same rotation, so that a setting is measured side by side
with the default config rather than minutes apart (e.g.
``--rlrt-variant eager_engine=rollout.enforce_eager=true``).

Nothing else should run on the machine meanwhile: the figures are wall-clock times. On a
machine whose speed drifts (a shared VM host), ``--rounds R`` runs the systems alternately R
times per workload (TRL, rlrt, rlrt one_step_off, then again) and pools each system's measured
steps, so that a slow spell hits all of them alike; the ratio of every round is printed too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # trl_bench (runs as a script)

from trl_bench.runners import REPO, RunResult, run_rlrt, run_trl  # noqa: E402
from trl_bench.workload import VARIANTS, build_workload  # noqa: E402


def format_result(result: RunResult) -> list[str]:
    phases = ", ".join(f"{k} {v:.2f}" for k, v in result.median_phases().items())
    startup = "-" if result.startup_seconds is None else f"{result.startup_seconds:.1f}"
    return [
        f"  {result.system:<5} {result.median_step:8.3f} s/step {result.median_tok_s:9.0f} tok/s"
        f"   peak RSS {result.peak_tree_rss_gb:5.2f} GB (largest process"
        f" {result.peak_process_rss_gb:.2f})   start-up {startup} s   wall"
        f" {result.wall_seconds:.0f} s   other-load {result.other_load:.2f} cores",
        f"        phases (median s): {phases}",
    ]


ONE_STEP_OFF = ("rollout.mode=one_step_off", "rollout.placement=disaggregated")
IN_RANK = ("rollout.backend=in_rank",)


def report(
    name: str,
    trl: list[RunResult],
    ours: list[RunResult],
    off: list[RunResult] | None = None,
    variants: dict[str, list[RunResult]] | None = None,
) -> str:
    """The workload's table: each system's rounds pooled, then the ratios (and per round, when
    there were several)."""
    rounds = len(ours)
    steps = len(ours[0].steps)
    pooled_trl, pooled_ours = RunResult.pooled(trl), RunResult.pooled(ours)
    pooled_off = RunResult.pooled(off) if off else None
    where = f"steps 3-{steps}" + (f" of {rounds} alternating rounds" if rounds > 1 else "")
    lines = [f"{name}: median over {where}"]
    lines += format_result(pooled_trl) + format_result(pooled_ours)
    lines += format_result(pooled_off) if pooled_off else []
    pooled_variants = {label: RunResult.pooled(runs) for label, runs in (variants or {}).items()}
    for pooled in pooled_variants.values():
        lines += format_result(pooled)
    ratio = pooled_trl.median_step / pooled_ours.median_step
    lines.append(f"  ratio TRL/rlrt s/step: {ratio:.2f}x  (> 1: rlrt-megatron faster)")
    trl_rounds = trl if len(trl) == rounds else trl * rounds  # --reuse-trl: one TRL run
    if rounds > 1:
        per_round = ", ".join(
            f"{t.median_step / o.median_step:.2f}x" for t, o in zip(trl_rounds, ours, strict=True)
        )
        lines.append(f"    per round: {per_round}")
    if pooled_off is not None:
        lines.append(
            "  ratio TRL/rlrt one_step_off s/step: "
            f"{pooled_trl.median_step / pooled_off.median_step:.2f}x"
        )
    for label, pooled in pooled_variants.items():
        per_round = ", ".join(
            f"{t.median_step / v.median_step:.2f}x"
            for t, v in zip(trl_rounds, variants[label], strict=True)
        )
        lines.append(
            f"  ratio TRL/{label} s/step: {pooled_trl.median_step / pooled.median_step:.2f}x"
            + (f"  (per round: {per_round})" if rounds > 1 else "")
        )
    return "\n".join(lines)


def measured(result: RunResult, folder: Path) -> RunResult:
    """Keep a system's figures beside the workload as soon as they exist (``--reuse-trl``)."""
    (folder / f"{result.system}_measured.json").write_text(json.dumps(vars(result), indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny workload alone")
    parser.add_argument(
        "--workloads", default="tiny,medium", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_vs_trl"))
    parser.add_argument(
        "--bench-python",
        default=str(REPO / ".venv-bench" / "bin" / "python"),
        help="python of the TRL venv (default: %(default)s)",
    )
    parser.add_argument("--json", help="also write the per-step figures here")
    parser.add_argument(
        "--no-one-step-off", action="store_true", help="skip the rollout.mode=one_step_off row"
    )
    parser.add_argument(
        "--no-in-rank", action="store_true", help="skip the rollout.backend=in_rank row"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the systems alternately this many times per workload and pool their steps",
    )
    parser.add_argument(
        "--reuse-trl",
        action="store_true",
        help="take TRL's figures from an earlier run's WORKDIR/<workload>/TRL_measured.json on "
        "this machine (TRL's side does not change with rlrt-megatron's code); said in the output",
    )
    parser.add_argument(
        "--rlrt-variant",
        action="append",
        default=[],
        metavar="LABEL=KEY=VALUE[,KEY=VALUE...]",
        help="an extra `rlrt train` row with these config overrides, run in the same rotation",
    )
    args = parser.parse_args(argv)
    variant_overrides = {} if args.no_in_rank else {"rlrt_in_rank": IN_RANK}
    for spec in args.rlrt_variant:
        label, sep, rest = spec.partition("=")
        if not sep or not label.isidentifier() or "=" not in rest:
            parser.error(f"--rlrt-variant {spec!r}: expected LABEL=KEY=VALUE[,KEY=VALUE...]")
        variant_overrides[label] = tuple(rest.split(","))
    bench_python = Path(args.bench_python)
    if not bench_python.exists():
        parser.error(f"{bench_python} does not exist: run `make bench-trl` (it creates the venv)")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    names = ["tiny"] if args.quick else args.workloads.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {sorted(VARIANTS)}")
    reports, dump = [], {}
    for name in names:
        folder = Path(args.workdir) / name
        info = build_workload(VARIANTS[name], folder)
        print(
            f"{name}: {info['parameters']:,} parameters, tokenizer {info['tokenizer']}", flush=True
        )
        saved_trl = folder / "TRL_measured.json"
        trl: list[RunResult] = []
        ours: list[RunResult] = []
        off: list[RunResult] = []
        extra: dict[str, list[RunResult]] = {label: [] for label in variant_overrides}
        if args.reuse_trl and saved_trl.is_file():
            trl.append(RunResult(**json.loads(saved_trl.read_text())))
            print(f"{name}: TRL figures reused from {saved_trl}", flush=True)
        for round_ in range(1, args.rounds + 1):
            tag = f" (round {round_}/{args.rounds})" if args.rounds > 1 else ""
            if not (args.reuse_trl and trl):
                trl.append(measured(run_trl(folder, bench_python), folder))
                print(f"{name}: TRL done{tag} ({trl[-1].median_step:.3f} s/step)", flush=True)
            ours.append(measured(run_rlrt(folder), folder))
            print(f"{name}: rlrt done{tag} ({ours[-1].median_step:.3f} s/step)", flush=True)
            if not args.no_one_step_off:
                off.append(measured(run_rlrt(folder, ONE_STEP_OFF, label="rlrt_1off"), folder))
                print(
                    f"{name}: rlrt one_step_off done{tag} ({off[-1].median_step:.3f} s/step)",
                    flush=True,
                )
            for label, overrides in variant_overrides.items():
                extra[label].append(measured(run_rlrt(folder, overrides, label=label), folder))
                print(
                    f"{name}: {label} done{tag} ({extra[label][-1].median_step:.3f} s/step)",
                    flush=True,
                )
        reports.append(report(name, trl, ours, off or None, extra))
        dump[name] = {
            runs[0].system: [vars(r) for r in runs]
            for runs in (trl, ours, off, *extra.values())
            if runs
        }
    print("\n" + "\n\n".join(reports))
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
