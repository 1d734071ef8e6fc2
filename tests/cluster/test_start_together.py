"""`start_together`: the engine pool and the policy group start at the same time (no Ray here:
the constructors are stand-ins)."""

from __future__ import annotations

import threading

import pytest

from rlrt_megatron.cluster.placement import start_together


class Part:
    def __init__(self, name, barrier=None, fail=False):
        self.name, self.stopped = name, False
        if barrier is not None:
            barrier.wait(timeout=10)  # both constructors must be running at once to pass it
        if fail:
            raise RuntimeError(f"{name} failed to start")

    def shutdown(self):
        self.stopped = True


def test_both_start_at_the_same_time():
    barrier = threading.Barrier(2)
    engines, policy = start_together(
        lambda: Part("engines", barrier), lambda: Part("policy", barrier), parallel=True
    )
    assert (engines.name, policy.name) == ("engines", "policy")


def test_sequential_when_not_parallel():
    order = []

    def make(name):
        order.append(name)
        return Part(name)

    start_together(lambda: make("engines"), lambda: make("policy"), parallel=False)
    assert order == ["engines", "policy"]


@pytest.mark.parametrize("parallel", [True, False])
def test_a_failure_shuts_the_other_down(parallel):
    made = []

    def engines():
        made.append(Part("engines"))
        return made[-1]

    with pytest.raises(RuntimeError, match="policy failed"):
        start_together(engines, lambda: Part("policy", fail=True), parallel=parallel)
    assert made[0].stopped
