"""Module-level graders for the trainer tests (spawned reward workers import them by name).

A random tiny model never solves arithmetic, so every group would be all-wrong and no teacher,
distillation or reweighting path would run. `parity_grade` marks about half of any model's
responses correct, deterministically from the text, so every method's paths are exercised.
"""

from __future__ import annotations

import zlib

from rlrt_megatron.rewards import Grade


def parity_grade(response: str, ground_truth: str) -> Grade:
    correct = zlib.crc32(response.encode()) % 2 == 0
    return Grade(float(correct), "correct" if correct else "wrong")
