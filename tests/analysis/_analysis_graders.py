"""A module-level grader for the rollouts test (spawned reward workers import it by name).

A random tiny model never solves a problem; `parity_grade` marks about half of any model's
responses correct, deterministically from the text, so peer contexts get exercised.
"""

from __future__ import annotations

import zlib

from rlrt_megatron.rewards import Grade


def parity_grade(response: str, ground_truth: str) -> Grade:
    correct = zlib.crc32(response.encode()) % 2 == 0
    return Grade(float(correct), "correct" if correct else "wrong")
