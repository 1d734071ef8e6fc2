"""Is Countdown a task where exploration matters for the warmed-up tiny model? (issue 18, item 1)

Research script for the miniature comparison (not a test). It prepares exactly what
``rlrt compare configs/miniature/countdown.yaml`` trains from (`quickstart.prepare`: tiny Qwen3,
Countdown splits, SFT warm-up; reused when ``--work`` already holds them), then samples the
held-out problems ``--samples`` times each at temperature 1 (top_k=0, top_p=1, as the runs'
evaluation) with Hugging Face ``generate`` on one process, grades them with ``grade_countdown``
and prints:

- pass@k for k = 1, 2, 4, ..., n (the unbiased estimator, `mean_pass_at_k`), against the same
  curve for a *uniform guesser* that boxes a random bracket-free ordering x operator choice of
  the given numbers (computed exactly per problem: 1 - (1 - s/N)^k);
- how often a sample is a well-formed answer over exactly the given numbers (format learnt) and
  the fraction of problems whose 8-sample groups are mixed (RL signal at the runs' group size);
- the accuracy when the prompt is the teacher's view holding the problem's own worked solution
  (does the model read its context, as the teacher of RLRT / RLSD / SDPO must?).

The task is what the issue asks for when the warmed-up model's pass@1 is low (~5-20%) and its
pass@64 much higher.

Usage:  python benchmarks/miniature_feasibility.py [--config configs/miniature/countdown.yaml]
            [--work runs/miniature/work] [--problems 128] [--samples 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart_feasibility import sample_responses  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/miniature/countdown.yaml")
    parser.add_argument("--work", default="runs/miniature/work")
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sft-steps", type=int, default=None, help="override quickstart.warmup.steps"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlrt_megatron.algorithms.metrics import mean_pass_at_k
    from rlrt_megatron.configuration import from_dict, read_yaml
    from rlrt_megatron.data.countdown import bracket_free_values
    from rlrt_megatron.data.readers import read_jsonl
    from rlrt_megatron.rewards.countdown import (
        evaluate_countdown,
        grade_countdown,
        parse_ground_truth,
    )
    from rlrt_megatron.rewards.math_verifier import extract_last_boxed
    from rlrt_megatron.trainer.quickstart import QuickstartConfig, prepare

    torch.set_num_threads(args.threads)
    tree = read_yaml(args.config)["quickstart"]
    if args.sft_steps is not None:
        tree["warmup"]["steps"] = args.sft_steps
    quick = from_dict(QuickstartConfig, tree)
    start = time.perf_counter()
    warm, _, test_file = prepare(quick, Path(args.work))
    prepare_s = time.perf_counter() - start
    records, _ = read_jsonl(test_file)
    records = records[: args.problems]
    tokenizer = AutoTokenizer.from_pretrained(warm)
    model = AutoModelForCausalLM.from_pretrained(warm, dtype=torch.float32).eval()
    torch.manual_seed(0)
    start = time.perf_counter()
    responses, _ = sample_responses(
        model,
        tokenizer,
        [r.question for r in records],
        num_samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        greedy=False,
    )
    sample_s = time.perf_counter() - start
    correct = np.zeros((len(records), args.samples), dtype=bool)
    well_formed = np.zeros_like(correct)
    uniform = []
    for i, (record, group) in enumerate(zip(records, responses, strict=True)):
        target, numbers = parse_ground_truth(record.ground_truth)
        for j, ids in enumerate(group):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            correct[i, j] = grade_countdown(text, record.ground_truth).score >= 1.0
            boxed = extract_last_boxed(text)
            well_formed[i, j] = boxed is not None and evaluate_countdown(boxed, numbers) is not None
        values = bracket_free_values(numbers)
        uniform.append(sum(v == target for v in values.values()) / len(values))
    uniform_p = np.asarray(uniform)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= args.samples]
    model_curve = {k: float(mean_pass_at_k(correct, k)) for k in ks}
    uniform_curve = {k: float(np.mean(1 - (1 - uniform_p) ** k)) for k in ks}
    # Can the warmed-up model read a solution in its context (what the teacher view needs)?
    # Each problem's prompt in the teacher's peer template holding its own worked solution,
    # 8 samples each: a model that follows the context answers nearly always.
    from rlrt_megatron.teacher.templates import PEER_TEMPLATE, teacher_prompt

    start = time.perf_counter()
    teacher_responses, _ = sample_responses(
        model,
        tokenizer,
        [teacher_prompt(r.question, r.solution, PEER_TEMPLATE) for r in records],
        num_samples=8,
        max_new_tokens=args.max_new_tokens,
        greedy=False,
    )
    teacher_s = time.perf_counter() - start
    teacher_view_acc = float(
        np.mean(
            [
                grade_countdown(
                    tokenizer.decode(ids, skip_special_tokens=True), r.ground_truth
                ).score
                for r, group in zip(records, teacher_responses, strict=True)
                for ids in group
            ]
        )
    )
    per_problem8 = correct[:, :8].mean(axis=1)
    report = {
        "config": args.config,
        "problems": len(records),
        "samples": args.samples,
        "pass_at_k_model": model_curve,
        "pass_at_k_uniform_guess": uniform_curve,
        "well_formed_rate": float(well_formed.mean()),
        "mixed_groups_of_8": float(((per_problem8 > 0) & (per_problem8 < 1)).mean()),
        "teacher_view_accuracy": teacher_view_acc,
        "prepare_seconds": prepare_s,
        "sampling_seconds": sample_s,
    }
    print(f"warmed-up model {warm}: {len(records)} held-out problems x {args.samples} samples")
    print(f"{'k':>5} {'model pass@k':>13} {'uniform guess':>14}")
    for k in ks:
        print(f"{k:>5} {100 * model_curve[k]:>12.1f}% {100 * uniform_curve[k]:>13.1f}%")
    print(
        f"well-formed answers {100 * report['well_formed_rate']:.1f}%, mixed 8-sample groups "
        f"{100 * report['mixed_groups_of_8']:.1f}%; prepare {prepare_s:.0f} s, sampling "
        f"{sample_s:.0f} s"
    )
    print(
        f"own worked solution in the teacher's peer template: {100 * teacher_view_acc:.1f}%"
        f" correct (8 samples per problem, {teacher_s:.0f} s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
