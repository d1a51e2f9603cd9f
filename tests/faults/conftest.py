"""Fixtures of the fault suite (its ``--long`` option is declared in tests/conftest.py,
where pytest sees it whatever paths are given).

The default run keeps every scenario to seconds of load, so the suite stays part of
every test run on a two-core machine; ``pytest tests/faults --long`` runs each phase
for a minute, which is what finds the faults that need many requests (or a listener's
ping interval, or a breaker's several cool-downs) to show, and prints each ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from tests.faults.harness import LONG, SHORT, FaultBed, Profile, Summary, fault_bed


@pytest.fixture
def profile(request: pytest.FixtureRequest) -> Profile:
    """The short profile, or the long one with ``--long``."""
    return LONG if request.config.getoption("--long") else SHORT


@pytest.fixture
async def bed() -> AsyncIterator[FaultBed]:
    """Private Redis and PostgreSQL for one scenario; everything stopped afterwards."""
    async with fault_bed() as bed:
        yield bed


@pytest.fixture
def show(profile: Profile, capsys: pytest.CaptureFixture[str]) -> Callable[[Summary], None]:
    """Print a ledger's summary: past the output capture with ``--long`` (the point of a
    long run is the numbers), captured otherwise (shown when the scenario fails)."""

    def show(summary: Summary) -> None:
        if profile.long:
            with capsys.disabled():
                print(f"\n{summary.render()}")
        else:
            print(summary.render())

    return show
