import pytest

from rlrt_megatron.algorithms.schedules import LinearSchedule, lambda_schedule


def test_constant_lambda_for_base_models():
    schedule = lambda_schedule(0.5)
    assert [schedule.value(s) for s in (0, 1, 100, 10_000)] == [0.5] * 4


def test_linear_decay_over_30_steps():
    schedule = lambda_schedule(0.5, decay_steps=30)
    assert schedule.value(0) == 0.5
    assert schedule.value(15) == pytest.approx(0.25)
    assert schedule.value(29) == pytest.approx(0.5 / 30)
    assert schedule.value(30) == 0.0
    assert schedule.value(500) == 0.0


def test_warmup_then_decay():
    schedule = LinearSchedule(init=0.5, decay_steps=4, warmup_steps=2)
    assert [schedule.value(s) for s in range(8)] == pytest.approx(
        [0.0, 0.25, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0]
    )


def test_bad_values():
    with pytest.raises(ValueError, match="lam_init must be in"):
        lambda_schedule(1.5)
    with pytest.raises(ValueError, match="decay_steps must be >= 1"):
        lambda_schedule(0.5, decay_steps=0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        LinearSchedule(init=0.5, warmup_steps=-1)
    with pytest.raises(ValueError, match="step must be >= 0"):
        lambda_schedule(0.5).value(-1)
