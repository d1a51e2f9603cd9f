"""Migrations: applied once, idempotent, and safe when replicas start together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from service.db.migrations import current_revision, head_revision, script_location, upgrade
from service.db.pool import ConnectionPool
from tests.helpers import fresh_database, service_url


@pytest.fixture
async def empty_pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """An empty database of this test's own (no schema), dropped afterwards."""
    async with fresh_database("svc_mig", pg_admin_url) as dsn:
        yield service_url(dsn)


def test_scripts_are_found_and_have_a_head() -> None:
    assert (script_location() / "env.py").is_file()
    assert head_revision() == "0002"


async def test_replicas_migrating_together_run_it_once(empty_pg_url: str) -> None:
    pools = [ConnectionPool(empty_pg_url) for _ in range(4)]
    try:
        outcomes = await asyncio.gather(*(upgrade(p) for p in pools))
        # Exactly one replica saw the empty schema; the others waited on the lock.
        assert sorted(outcomes, key=str) == sorted(
            [(None, "0002")] + [("0002", "0002")] * 3, key=str
        )
        assert await current_revision(pools[0]) == "0002"
        async with pools[0].connection() as conn:
            columns = (
                await conn.execute(
                    text(
                        "SELECT column_name, data_type FROM information_schema.columns"
                        " WHERE table_name = 'results' ORDER BY ordinal_position"
                    )
                )
            ).all()
            collation = (
                await conn.execute(
                    text(
                        "SELECT collation_name FROM information_schema.columns"
                        " WHERE table_name = 'results' AND column_name = 'analysis_id'"
                    )
                )
            ).scalar()
        assert [tuple(c) for c in columns] == [
            ("analysis_id", "text"),
            ("result", "jsonb"),
            ("version", "bigint"),
            ("created_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
        ]
        assert collation == "C"
    finally:
        for p in pools:
            await p.aclose()


async def test_sqlite_migrators_are_serialised(sqlite_url: str) -> None:
    pools = [ConnectionPool(sqlite_url) for _ in range(3)]
    try:
        outcomes = await asyncio.gather(*(upgrade(p) for p in pools))
        assert sorted(outcomes, key=str).count(("0002", "0002")) == 2
        assert await current_revision(pools[0]) == "0002"
    finally:
        for p in pools:
            await p.aclose()
