r"""A custom reward: numeric answers graded within a relative tolerance, in the sandboxed pool.

A reward is a module-level function ``(response, ground_truth) -> Grade(score, status)``,
registered under a name. The trainer grades with ``RewardPool.from_config(config.reward)``: worker
processes with a per-item time limit (model output is untrusted), so a grader that hangs costs
one item (status ``timeout``), never the run. Run:

    python examples/custom_reward.py

To train with it, register it in the script that starts the run, then select it by name:

    register_reward("numeric_tolerance", numeric_tolerance)
    train(load_run_config("my_run.yaml", ["reward.name=numeric_tolerance"]))
"""

from __future__ import annotations

import time

from rlrt_megatron.rewards import (
    Grade,
    RewardConfig,
    RewardPool,
    extract_last_boxed,
    register_reward,
)
from rlrt_megatron.rewards.math_verifier import CORRECT, NO_ANSWER, WRONG

RELATIVE_TOLERANCE = 1e-2


def numeric_tolerance(response: str, ground_truth: str) -> Grade:
    """1.0 when the last \boxed{} holds a number within 1% of the ground truth."""
    if "HANG" in response:  # stands in for a pathological input that never finishes
        time.sleep(3600)
    answer = extract_last_boxed(response)
    if answer is None:
        return Grade(0.0, NO_ANSWER)
    try:
        value, target = float(answer.replace(",", "")), float(ground_truth)
    except ValueError:
        return Grade(0.0, WRONG)
    ok = abs(value - target) <= RELATIVE_TOLERANCE * max(abs(target), 1e-12)
    return Grade(1.0, CORRECT) if ok else Grade(0.0, WRONG)


def main() -> None:
    register_reward("numeric_tolerance", numeric_tolerance)
    config = RewardConfig(name="numeric_tolerance", num_workers=2, timeout_s=2.0)
    items = [
        ("g = 9.81, so the answer is \\boxed{9.8}.", "9.81"),
        ("The speed is \\boxed{12,000}.", "11950"),
        ("I think it is \\boxed{3.5}.", "3.0"),
        ("No box here: 42.", "42"),
        ("\\boxed{HANG}", "1"),
    ]
    # Workers are spawned processes: they find `numeric_tolerance` by importing this file.
    with RewardPool.from_config(config) as pool:
        batch = pool.grade([r for r, _ in items], [g for _, g in items])
    for (response, truth), score, status in zip(items, batch.scores, batch.statuses, strict=True):
        print(f"{score:.0f} {status:<9} truth {truth:>6} | {response}")
    stats = batch.stats
    print(f"reward_mean {stats['reward_mean']:.2f} timeout_rate {stats['timeout_rate']:.2f}")


if __name__ == "__main__":  # required: the pool's spawned workers re-import this file
    main()
