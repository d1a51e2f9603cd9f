"""The periodic maintenance task of the app (DB_MAINTENANCE_INTERVAL): it runs, it stops
with the app, and it does not exist by default.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import (
    ClientFactory,
    Column,
    Database,
    advisory_lock_is_free,
    stat,
    wait_for_stat,
)


def periodic_tasks() -> list[asyncio.Task[Any]]:
    """Pending tasks running the service's periodic maintenance loop."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "maintain_periodically"
    ]


@pytest.mark.parametrize(
    ("operation", "column"), [("analyze", "last_analyze"), ("vacuum", "last_vacuum")]
)
async def test_periodic_maintenance_runs_with_an_interval(
    make_client: ClientFactory, migrated_db: Database, operation: str, column: Column
) -> None:
    """DB_MAINTENANCE_INTERVAL=0.2 makes the app run DB_MAINTENANCE_OPERATION by itself:
    PostgreSQL records it on results within seconds; shutdown cancels the task and
    leaves the advisory lock free."""
    settings = {"db_maintenance_interval": 0.2, "db_maintenance_operation": operation}
    async with make_client(database_url=migrated_db.url, **settings):
        (task,) = periodic_tasks()
        await wait_for_stat(migrated_db, "public.results", column)
    assert task.done()
    assert periodic_tasks() == []
    assert await advisory_lock_is_free(migrated_db)


async def test_no_periodic_maintenance_by_default(
    make_client: ClientFactory, migrated_db: Database
) -> None:
    """With the default interval (0) no task is started and, over 1.5 s, nothing is
    analyzed or vacuumed."""
    async with make_client(database_url=migrated_db.url):
        assert periodic_tasks() == []
        await asyncio.sleep(1.5)  # long enough for several runs at the interval above
    assert await stat(migrated_db, "public.results", "last_analyze") is None
    assert await stat(migrated_db, "public.results", "last_vacuum") is None
