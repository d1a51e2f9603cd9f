"""Fixtures of the database tests: PostgreSQL databases of a test's (or a module's) own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.db.pool import ConnectionPool
from tests.helpers import Database, scratch_database


@pytest.fixture
async def db(pg_admin_url: str) -> AsyncIterator[Database]:
    """An empty database of this test's own (``svc_db_<random>``), dropped afterwards:
    the statistics PostgreSQL keeps of it come only from what the test did."""
    async with scratch_database("svc_db", pg_admin_url) as database:
        yield database


@pytest.fixture
async def migrated_db(pg_admin_url: str) -> AsyncIterator[Database]:
    """A database of this test's own with the service's schema (table ``results``)."""
    async with scratch_database("svc_mnt", pg_admin_url, migrated=True) as database:
        yield database


@pytest.fixture(scope="module")
async def shared_db(pg_admin_url: str) -> AsyncIterator[Database]:
    """A migrated database for the tests of a module that read no statistics."""
    async with scratch_database("svc_mnt", pg_admin_url, migrated=True) as database:
        yield database


@pytest.fixture
async def db_pool(db: Database) -> AsyncIterator[ConnectionPool]:
    """A small pool on ``db``."""
    async with ConnectionPool(db.url, pool_size=3, max_overflow=0, pool_timeout=5) as pool:
        yield pool
