"""A circuit breaker, so a dead Redis costs one timeout per cool-down, not one per request.

closed     every call goes through; ``failure_threshold`` failures in a row open it.
open       calls are skipped (the caller treats them as misses) for ``cooldown`` seconds.
half-open  one trial call goes through: success closes the breaker, failure reopens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from service.errors import InvalidArgument


class BreakerState(StrEnum):
    """Where the breaker stands; the value is what metrics and /admin report."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Counts consecutive failures; no I/O, no locks (one event loop owns it)."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown <= 0:
            raise InvalidArgument("failure_threshold must be >= 1 and cooldown > 0")
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one trial at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def record_abandoned(self) -> None:
        """The call ended without a verdict (cancelled, or failed for another reason).

        Frees the half-open trial slot, so a cancelled trial cannot leave the breaker
        waiting for a verdict that never comes.
        """
        self._trial_running = False

    def record_failure(self) -> None:
        self._trial_running = False
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            if self._opened_at is None:
                self.times_opened += 1
            self._opened_at = self._clock()
