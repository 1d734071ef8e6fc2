"""Verifiable rewards: math answer grading (math-verify) in sandboxed worker processes with a hard
per-item time limit, and a registry that maps a config name to a reward function."""

from rlrt_megatron.rewards.math_verifier import (
    STATUSES,
    Grade,
    extract_answer_line,
    extract_last_boxed,
    grade_math,
    grade_math_dapo,
    verify_answer,
)
from rlrt_megatron.rewards.pool import RewardBatch, RewardConfig, RewardPool
from rlrt_megatron.rewards.registry import RewardFn, get_reward, register_reward, reward_names

__all__ = [
    "STATUSES",
    "Grade",
    "RewardBatch",
    "RewardConfig",
    "RewardFn",
    "RewardPool",
    "extract_answer_line",
    "extract_last_boxed",
    "get_reward",
    "grade_math",
    "grade_math_dapo",
    "register_reward",
    "reward_names",
    "verify_answer",
]
