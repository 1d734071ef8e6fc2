"""Reward functions by name, so the trainer picks one from its config.

A reward function maps ``(response, ground_truth)`` to a `Grade`. It runs in the reward pool's
worker processes, which are started with ``spawn``: the function is sent by reference, so it must
be a module-level function (lambdas and closures cannot be pickled by reference). Each new worker
grades one warm-up item before it reports ready, ``("The answer is \\boxed{1}.", "1")`` unless the
function carries its own as a ``warmup_item`` attribute (a grader whose ground truths have another
format, e.g. `rlrt_megatron.rewards.countdown.grade_countdown`).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

from rlrt_megatron.rewards.countdown import grade_countdown
from rlrt_megatron.rewards.math_verifier import Grade, grade_math, grade_math_dapo

RewardFn = Callable[[str, str], Grade]

_REWARDS: dict[str, RewardFn] = {
    "math": grade_math,
    "math_dapo": grade_math_dapo,
    "countdown": grade_countdown,
}


def register_reward(name: str, fn: RewardFn, *, overwrite: bool = False) -> None:
    """Make ``fn`` available as ``name``; it must be picklable by reference (module-level)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")
    if name in _REWARDS and not overwrite and _REWARDS[name] is not fn:
        raise ValueError(f"reward {name!r} is already registered (pass overwrite=True)")
    try:
        pickle.dumps(fn)
    except Exception as e:
        raise ValueError(
            f"reward {name!r}: {fn!r} cannot be sent to worker processes ({e}); "
            "define it at module level"
        ) from e
    _REWARDS[name] = fn


def get_reward(name: str) -> RewardFn:
    """The reward function registered as ``name``."""
    try:
        return _REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; registered: {sorted(_REWARDS)}") from None


def reward_names() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(_REWARDS)
