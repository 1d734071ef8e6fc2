"""A module-level grader for the evaluation tests (spawned reward workers import it by name).

The tiny random model never answers correctly, so with the math grader every sample would be
wrong and pass@k would be 0 everywhere; `parity_grade` marks about half of any model's responses
correct, deterministically from the text, so the pass@k arithmetic is exercised for real."""

from __future__ import annotations

import zlib

from rlrt_megatron.rewards import Grade


def parity_grade(response: str, ground_truth: str) -> Grade:
    correct = zlib.crc32(response.encode()) % 2 == 0
    return Grade(float(correct), "correct" if correct else "wrong")
