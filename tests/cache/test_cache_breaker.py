"""The circuit breaker's states, driven by a fake clock."""

from __future__ import annotations

import pytest

from service.cache.breaker import BreakerState, CircuitBreaker


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so the type checker does not pin it between reads."""
    return breaker.state


def test_opens_after_threshold_then_half_opens_after_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.times_opened == 1
    assert not breaker.allow()
    now[0] = 5.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # one trial
    assert not breaker.allow()  # and only one
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()


def test_a_failed_trial_reopens_for_a_full_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    now[0] = 9.9
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()
    assert breaker.times_opened == 1


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 5.0), (3, 0.0), (3, -1.0)])
def test_bad_parameters_are_refused(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(failure_threshold=threshold, cooldown=cooldown)


def test_an_abandoned_trial_frees_the_slot() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0
    assert breaker.allow()
    breaker.record_abandoned()  # e.g. the trial call was cancelled
    assert breaker.allow()  # another trial may go
