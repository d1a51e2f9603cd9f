"""Every statement the API runs uses an index, on a table big enough for the planner to care.

The statements are the store's own compiled SQL (every attribute of its statement set,
so a statement added later is checked without touching this file), planned by
PostgreSQL with realistic parameters over 120,000 rows, a tenth of them tombstones,
once as a custom plan and once as the generic plan a prepared statement may switch to.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import ClauseElement

from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.db.schema import results
from tests.helpers import fresh_database, service_url

ROWS = 120_000
VALUES = {
    "id": "r-0060000",
    "doc": '{"n": 1}',
    "ts": datetime(2026, 1, 1, tzinfo=UTC),
    "expected": 1,
    "limit": 101,
    "after": "r-0060000",
    "max": 1048576,
    "version": 1,
    "before": datetime(2026, 1, 1, tzinfo=UTC),
    "cache": "svc:results",
}
TABLES = ("results", "unsynced_results")
READ_WHOLE_ON_PURPOSE = {"unsynced", "forget_unsynced_before", "database_now"}
"""The notes of writes that missed Redis are read whole every second by design: the
table holds rows only while Redis misses writes, and is empty otherwise (its size is
capped by MAX_UNSYNCED). The clock needs no table."""


@pytest.fixture(scope="module")
async def loaded(pg_admin_url: str) -> AsyncIterator[ConnectionPool]:
    """A fresh database with ROWS results, analyzed."""
    async with (
        fresh_database("svc_plans", pg_admin_url) as dsn,
        ConnectionPool(service_url(dsn)) as pool,
    ):
        await upgrade(pool)
        async with pool.connection() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO results (analysis_id, result, version, created_at, updated_at)"
                " SELECT 'r-' || lpad(i::text, 7, '0'),"
                " CASE WHEN i % 10 = 0 THEN NULL ELSE jsonb_build_object('n', i) END,"
                " 1, now(), now() FROM generate_series(1, $1::int) AS i",
                (ROWS,),
            )
            await conn.exec_driver_sql("ANALYZE results")
        yield pool


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def plan_of(conn: AsyncConnection, statement: Any) -> dict[str, Any]:
    compiled = statement.compile(dialect=conn.dialect)
    params = compiled.construct_params(VALUES)
    args = tuple(params[name] for name in compiled.positiontup)
    raw = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", args)).scalar_one()
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return plan


def uses_an_index(plan: dict[str, Any]) -> bool:
    """True when the plan reaches ``results`` through an index and never scans it whole."""
    found = list(nodes(plan))
    on_results = [n for n in found if n.get("Relation Name") in TABLES]
    if any(n["Node Type"] == "Seq Scan" for n in on_results):
        return False
    if any(n.get("Conflict Arbiter Indexes") for n in on_results):
        return True  # INSERT ... ON CONFLICT: the primary key finds the conflicting row
    return any("Index" in n["Node Type"] for n in on_results)


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_every_statement_of_the_api_uses_an_index(loaded: ConnectionPool, mode: str) -> None:
    statements = {
        name: statement
        for name, statement in vars(ResultStore(loaded)._statements).items()
        if isinstance(statement, ClauseElement)
    }
    assert len(statements) >= 9  # get, 2 inserts, 2 replaces, 2 deletes, 2 list pages
    async with loaded.connection() as conn:
        await conn.exec_driver_sql(f"SET plan_cache_mode = {mode}")
        try:
            plans = {name: await plan_of(conn, stmt) for name, stmt in statements.items()}
        finally:
            await conn.exec_driver_sql("RESET plan_cache_mode")
    without = {
        name: plan
        for name, plan in plans.items()
        if name not in READ_WHOLE_ON_PURPOSE and not uses_an_index(plan)
    }
    assert not without, json.dumps(without, indent=1)[:2000]


async def test_the_check_itself_sees_a_sequential_scan(loaded: ConnectionPool) -> None:
    """The assertion above is not vacuous: a filter on an unindexed column is caught."""
    async with loaded.connection() as conn:
        plan = await plan_of(conn, select(results.c.analysis_id).where(results.c.version == 7))
    assert not uses_an_index(plan)
