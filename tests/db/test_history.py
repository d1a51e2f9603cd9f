"""The optimizer's history: snapshots of statement statistics and table sizes, and the
report's ``changes`` check, on real PostgreSQL servers (pg_stat_statements needs a
private cluster that preloads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from service.db.diagnostics import Thresholds
from service.db.optimization import QueryOptimizer, maintain_periodically
from service.db.pool import ConnectionPool
from service.errors import OptimizerError
from tests.db.test_optimizer_report import (
    make_report,
    optimizer,
    run_sql,
    session,
    statements_database,
    subjects,
)
from tests.helpers import Database
from tests.support.server import run_cli


async def snapshot_ids(db: Database) -> list[int]:
    async with session(db) as conn:
        found = await conn.fetch("SELECT id FROM service_optimizer_snapshots ORDER BY id")
    return [row["id"] for row in found]


async def test_the_tables_that_grew_fastest_between_two_snapshots(db: Database) -> None:
    """Two snapshots around writes: the report names the tables that grew by a
    megabyte or more, fastest first, and not the snapshots' own table; without
    pg_stat_statements a snapshot says why it holds no statements."""
    await run_sql(
        db,
        "CREATE TABLE big (n integer, pad text)",
        "CREATE TABLE bigger (n integer, pad text)",
        "CREATE TABLE small (n integer)",
    )
    report = await make_report(db)
    assert not report.check("changes").ran
    async with optimizer(db) as opt:
        first = await opt.snapshot()
        assert first.statements == 0
        assert first.note is not None
        assert "pg_stat_statements" in first.note
        assert first.tables == 3
        await run_sql(
            db,
            "INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, 20000) AS i",
            "INSERT INTO bigger SELECT i, repeat('x', 100) FROM generate_series(1, 40000) AS i",
            "INSERT INTO small SELECT i FROM generate_series(1, 100) AS i",
        )
        second = await opt.snapshot()
        assert second.id > first.id
        report = await opt.report()
    changes = report.check("changes")
    assert changes.ran
    assert subjects(report, "changes") == ["public.bigger", "public.big"]
    grew = changes.findings[0]
    assert grew.data["grew"] > 4 * 1024 * 1024, grew.data
    assert "a day at that rate" in grew.detail
    assert f"between snapshots {first.id} and {second.id}" in grew.detail


async def test_snapshots_keep_the_newest(db: Database) -> None:
    async with optimizer(db) as opt:
        taken = [(await opt.snapshot(keep=3)).id for _ in range(5)]
    assert await snapshot_ids(db) == taken[-3:]


@pytest.mark.own_cluster
async def test_a_statement_whose_mean_grew_is_named() -> None:
    """With pg_stat_statements preloaded: a query that got slower between two snapshots
    (its table grew a hundredfold) is named with its text and both means; a query
    whose cost did not change is not."""
    limits = Thresholds(changed_calls=20)
    async with (
        asyncio.timeout(60),
        statements_database(
            "svc_hist",
            "CREATE TABLE t (a integer, b integer)",
            "INSERT INTO t SELECT i, i % 1000 FROM generate_series(1, 2000) AS i",
        ) as db,
    ):

        async def run_queries() -> None:
            async with session(db) as conn:
                by_b = await conn.prepare("SELECT count(*) FROM t WHERE b = $1")
                constant = await conn.prepare("SELECT $1::integer + 1")
                for value in range(50):
                    await by_b.fetchval(value)
                    await constant.fetchval(value)

        async with optimizer(db, limits) as opt:
            await run_queries()
            before = await opt.snapshot()
            assert before.statements > 0
            await run_sql(
                db, "INSERT INTO t SELECT i, i % 1000 FROM generate_series(1, 300000) AS i"
            )
            await run_queries()
            await opt.snapshot()
            report = await opt.report()
    named = [f for f in report.check("changes").findings if f.subject.startswith("query ")]
    assert len(named) == 1, [f.detail for f in report.check("changes").findings]
    (slower,) = named
    assert "FROM t WHERE b = $1" in slower.detail
    assert slower.data["calls"] == 50
    assert slower.data["mean_ms_since"] > 1.5 * slower.data["mean_ms_before"], slower.data


async def test_each_periodic_run_takes_one_snapshot(db: Database) -> None:
    """The periodic maintenance task takes a snapshot each interval, and none when one
    was taken within it (another replica's, say): here one taken by hand just before
    the loop's first run, which then skips."""
    async with ConnectionPool(db.url, pool_size=2, max_overflow=0) as pool:
        opt = QueryOptimizer(pool)
        task = asyncio.create_task(maintain_periodically(opt, "analyze", 0.5))
        try:
            await asyncio.sleep(0.35)
            await opt.snapshot()
            await asyncio.sleep(1.8)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    async with session(db) as conn:
        times = [
            row["taken_at"]
            for row in await conn.fetch(
                "SELECT taken_at FROM service_optimizer_snapshots ORDER BY id"
            )
        ]
    assert len(times) >= 3, times
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.45, gaps


async def test_cli_db_snapshot(db: Database) -> None:
    """``service db snapshot`` takes one and prints what it holds."""
    status, out, err = await run_cli("db", "snapshot", env={"DATABASE_URL": db.url})
    assert status == 0, err
    assert out.startswith("snapshot 1 at ")
    assert "0 statements" in out
    assert await snapshot_ids(db) == [1]


async def test_snapshots_need_postgresql(sqlite_url: str) -> None:
    async with ConnectionPool(sqlite_url) as pool:
        with pytest.raises(OptimizerError, match="SQLite"):
            await QueryOptimizer(pool).snapshot()
