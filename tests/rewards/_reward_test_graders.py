"""Module-level graders for the reward-pool tests: spawned workers import them by name."""

from __future__ import annotations

import os
import time

from rlrt_megatron.rewards import Grade, grade_math


def sleepy_grade(response: str, ground_truth: str) -> Grade:
    """Hangs (far past any test's time limit) on the response "SLEEP"; grades normally otherwise."""
    if response == "SLEEP":
        time.sleep(600)
    return grade_math(response, ground_truth)


def crashing_grade(response: str, ground_truth: str) -> Grade:
    """Kills its own process on "CRASH", as a segfault in a C extension would."""
    if response == "CRASH":
        os._exit(3)
    return grade_math(response, ground_truth)


def hungry_grade(response: str, ground_truth: str) -> Grade:
    """Tries to allocate 8 GiB on "ALLOCATE" (the worker's address-space limit must stop it)."""
    if response == "ALLOCATE":
        block = bytearray(8 * 1024**3)
        return Grade(float(len(block) > 0), "correct")
    return grade_math(response, ground_truth)


def broken_grade(response: str, ground_truth: str) -> Grade:
    """Always raises: the worker's warm-up call fails and the pool must say so."""
    raise RuntimeError("grader misconfigured")
