"""QueryOptimizer maintenance on a real PostgreSQL server, end to end.

What is proved here, each against what PostgreSQL itself records:

* ANALYZE and VACUUM really run, one statement per table, outside any transaction;
* one maintainer at a time (the advisory lock), released after every run;
* table names are looked up, never pasted into SQL;
* ``lock_timeout`` skips a table someone holds, ``statement_timeout`` cancels a statement,
  and either way the run goes on and the pooled connection gets its settings back;
* apply() runs exactly the statement a report's finding recommends.

The admin endpoints, the ``service db`` commands and the periodic task drive the same
(test_maintenance_http.py, test_maintenance_cli.py, test_maintenance_periodic.py).

Every test that reads statistics (``pg_stat_all_tables``) gets a database of its own
(the ``db`` fixture), dropped afterwards, so nothing another test did can show up.
Statistics are polled for up to :data:`STATS_TIMEOUT` seconds, never waited for blindly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from service.db.optimization import MaintenanceRun, QueryOptimizer
from service.db.pool import ConnectionPool
from service.db.report import Finding
from service.errors import InvalidOperation, MaintenanceRunning, OptimizerError, UnknownTable
from tests.helpers import (
    HOSTILE,
    STATS_TIMEOUT,
    Column,
    Database,
    advisory_lock_held,
    advisory_lock_is_free,
    stat,
    wait_for_stat,
)

# --- helpers ------------------------------------------------------------------------------


async def wait_until_blocked(db: Database, pattern: str = r"^(VACUUM|ANALYZE) ") -> None:
    """Poll until a backend of ``db`` whose query matches ``pattern`` waits for a lock."""
    deadline = time.monotonic() + STATS_TIMEOUT
    while not await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = $1 AND wait_event_type = 'Lock' AND query ~ $2",
        db.name,
        pattern,
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"no backend waited for a lock within {STATS_TIMEOUT} s")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def locked(db: Database, table: str) -> AsyncIterator[Any]:
    """Hold ACCESS EXCLUSIVE on ``table`` in an open transaction of another session.

    Yields that session's connection: the body may COMMIT (releasing the lock) itself;
    otherwise the transaction is rolled back on the way out.
    """
    conn = await db.connect()
    try:
        await conn.execute("BEGIN")
        await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield conn
    finally:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        await conn.close()


def outcomes(run: MaintenanceRun) -> list[tuple[str, str]]:
    return [(table.table, table.outcome) for table in run.tables]


# --- maintenance really runs --------------------------------------------------------------


async def test_vacuum_of_one_table_vacuums_and_analyzes_that_table_only(
    db: Database, db_pool: ConnectionPool
) -> None:
    """vacuum(["t"]) runs ``VACUUM (ANALYZE) public.t``: PostgreSQL records a manual
    vacuum and analyze of t, and nothing of the table that was not named."""
    await db.execute("CREATE TABLE t (id int); CREATE TABLE u (id int)")
    assert await stat(db, "public.t", "last_vacuum") is None
    assert await stat(db, "public.t", "last_analyze") is None

    run = await QueryOptimizer(db_pool).vacuum(["t"])

    assert run.operation == "vacuum"
    assert outcomes(run) == [("public.t", "done")]
    assert run.tables[0].statement == "VACUUM (ANALYZE) public.t"
    assert run.tables[0].detail is None
    assert run.started_at.tzinfo is not None
    await wait_for_stat(db, "public.t", "last_vacuum")
    await wait_for_stat(db, "public.t", "last_analyze")
    assert await stat(db, "public.u", "last_vacuum") is None
    assert await stat(db, "public.u", "last_analyze") is None
    assert await advisory_lock_is_free(db)


async def test_vacuum_without_analyze_is_plain_vacuum(
    db: Database, db_pool: ConnectionPool
) -> None:
    """vacuum(analyze=False) runs ``VACUUM public.t``: a vacuum is recorded, no analyze."""
    await db.execute("CREATE TABLE t (id int)")

    run = await QueryOptimizer(db_pool).vacuum(["t"], analyze=False)

    assert [table.statement for table in run.tables] == ["VACUUM public.t"]
    await wait_for_stat(db, "public.t", "last_vacuum")
    assert await stat(db, "public.t", "last_analyze") is None


async def test_analyze_moves_last_analyze_and_does_not_vacuum(
    db: Database, db_pool: ConnectionPool
) -> None:
    """analyze(["t"]) runs ``ANALYZE public.t``: last_analyze is set, last_vacuum not."""
    await db.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")

    run = await QueryOptimizer(db_pool).analyze(["t"])

    assert run.operation == "analyze"
    assert outcomes(run) == [("public.t", "done")]
    assert run.tables[0].statement == "ANALYZE public.t"
    await wait_for_stat(db, "public.t", "last_analyze")
    assert await stat(db, "public.t", "last_vacuum") is None
    assert await db.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = 't'") == 1


async def test_by_default_every_table_of_every_schema_gets_one_statement(
    db: Database, db_pool: ConnectionPool
) -> None:
    """vacuum() with no tables covers every table of the database, in a second schema
    too and with a name that needs quoting, one statement per table, each recorded."""
    await db.execute(
        'CREATE TABLE t (id int); CREATE TABLE u (id int); CREATE TABLE "Mixed Case" (id int);'
        " CREATE SCHEMA other; CREATE TABLE other.w (id int)"
    )
    tables = ["other.w", 'public."Mixed Case"', "public.t", "public.u"]

    assert sorted(await QueryOptimizer(db_pool).tables()) == tables
    run = await QueryOptimizer(db_pool).vacuum()

    assert sorted(table.table for table in run.tables) == tables
    assert sorted(table.statement for table in run.tables) == [
        f"VACUUM (ANALYZE) {table}" for table in tables
    ]
    assert {table.outcome for table in run.tables} == {"done"}
    for table in tables:
        await wait_for_stat(db, table, "last_vacuum")


async def test_names_short_or_qualified_each_run_once_quoted_by_the_server(
    db: Database, db_pool: ConnectionPool
) -> None:
    """``t`` and ``public.t`` are the same table (one statement); ``Mixed Case`` and
    ``other.w`` are accepted as written and reach SQL quoted by PostgreSQL."""
    await db.execute(
        'CREATE TABLE t (id int); CREATE TABLE "Mixed Case" (id int);'
        " CREATE SCHEMA other; CREATE TABLE other.w (id int)"
    )

    run = await QueryOptimizer(db_pool).analyze(["t", "public.t", "Mixed Case", "other.w"])

    assert [table.statement for table in run.tables] == [
        "ANALYZE public.t",
        'ANALYZE public."Mixed Case"',
        "ANALYZE other.w",
    ]
    await wait_for_stat(db, 'public."Mixed Case"', "last_analyze")


async def test_the_names_tables_returns_are_accepted_back(
    db: Database, db_pool: ConnectionPool
) -> None:
    """What tables() gives (quoted where SQL needs it) can be handed straight back."""
    await db.execute('CREATE TABLE "Mixed Case" (id int); CREATE TABLE "we""ird" (id int)')
    optimizer = QueryOptimizer(db_pool)

    names = await optimizer.tables()
    run = await optimizer.analyze(names)

    assert [table.statement for table in run.tables] == [f"ANALYZE {name}" for name in names]
    assert 'public."we""ird"' in names
    assert {table.outcome for table in run.tables} == {"done"}


async def test_a_short_name_means_the_table_the_search_path_finds_first(
    db: Database, db_pool: ConnectionPool
) -> None:
    """With ``search_path = zeta, public`` and a table t in both, ``t`` in SQL is zeta.t;
    maintenance of ``t`` must mean the same table, not the alphabetically first one."""
    await db.execute(
        "CREATE SCHEMA zeta; CREATE TABLE zeta.t (id int); CREATE TABLE public.t (id int);"
        f' ALTER DATABASE "{db.name}" SET search_path = zeta, public'
    )
    async with ConnectionPool(db.url, pool_size=2, max_overflow=0) as pool:
        async with pool.connection() as conn:
            meant = (await conn.exec_driver_sql("SELECT 't'::regclass::oid")).scalar_one()
        assert meant == await db.fetchval("SELECT 'zeta.t'::regclass::oid")

        run = await QueryOptimizer(pool).vacuum(["t"])

    assert [table.statement for table in run.tables] == ["VACUUM (ANALYZE) zeta.t"]
    await wait_for_stat(db, "zeta.t", "last_vacuum")
    assert await stat(db, "public.t", "last_vacuum") is None


async def test_other_sessions_temporary_tables_are_not_the_databases_own(
    db: Database, db_pool: ConnectionPool
) -> None:
    """A temporary table of another session is neither listed nor accepted by name:
    PostgreSQL silently skips it (so "done" would be untrue), and it vanishes with
    its session, possibly in the middle of a run."""
    await db.execute("CREATE TABLE t (id int)")
    other = await db.connect()
    try:
        await other.execute("CREATE TEMPORARY TABLE scratch (id int)")
        schema = await other.fetchval(
            "SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()"
        )
        optimizer = QueryOptimizer(db_pool)

        assert await optimizer.tables() == ["public.t"]
        assert outcomes(await optimizer.vacuum()) == [("public.t", "done")]
        with pytest.raises(UnknownTable):
            await optimizer.vacuum([f"{schema}.scratch"])
    finally:
        await other.close()


# --- never inside a transaction -----------------------------------------------------------


async def test_vacuum_runs_outside_any_transaction_and_leaves_none_open(
    db: Database, db_pool: ConnectionPool
) -> None:
    """VACUUM raises "cannot run inside a transaction block" in one, so "done" proves
    there was none; afterwards each pooled session is idle, not idle in a transaction."""
    await db.execute("CREATE TABLE t (id int)")

    run = await QueryOptimizer(db_pool).vacuum(["t"])

    assert outcomes(run) == [("public.t", "done")]
    await wait_for_stat(db, "public.t", "last_vacuum")
    states = await db.fetchval(
        "SELECT array_agg(state) FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'service'",
        db.name,
    )
    assert states, "no pooled session found"
    assert set(states) == {"idle"}, states


async def test_the_callers_own_open_transaction_does_not_matter(
    db: Database, db_pool: ConnectionPool
) -> None:
    """Maintenance called while the caller holds an open transaction (on another pooled
    connection, with an uncommitted write to t) runs on a connection of its own, and
    the caller's transaction still commits."""
    await db.execute("CREATE TABLE t (id int); CREATE TABLE u (id int)")

    async with db_pool.transaction() as conn:
        await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        run = await QueryOptimizer(db_pool).vacuum(["t", "u"])

    assert outcomes(run) == [("public.t", "done"), ("public.u", "done")]
    await wait_for_stat(db, "public.t", "last_vacuum")
    await wait_for_stat(db, "public.u", "last_vacuum")
    assert await db.fetchval("SELECT count(*) FROM t") == 1


# --- one maintainer at a time -------------------------------------------------------------


async def test_a_held_advisory_lock_refuses_maintenance_at_once(
    db: Database, db_pool: ConnectionPool
) -> None:
    """While another session holds the advisory lock, maintain() raises
    MaintenanceRunning well within lock_timeout and runs nothing; once it is released,
    the same call runs."""
    await db.execute("CREATE TABLE t (id int)")
    optimizer = QueryOptimizer(db_pool, lock_timeout=5.0)

    async with advisory_lock_held(db) as release:
        started = time.perf_counter()
        with pytest.raises(MaintenanceRunning, match="already running"):
            await optimizer.vacuum(["t"])
        assert time.perf_counter() - started < 1.0
        assert await stat(db, "public.t", "last_vacuum") is None
        await release()

        run = await optimizer.vacuum(["t"])

    assert outcomes(run) == [("public.t", "done")]
    await wait_for_stat(db, "public.t", "last_vacuum")
    assert await advisory_lock_is_free(db)


async def test_two_concurrent_calls_one_runs_and_the_other_is_refused(
    db: Database, db_pool: ConnectionPool
) -> None:
    """vacuum and analyze started together while t is locked by someone else: one takes
    the advisory lock and waits for t, the other is refused at once; when t is free
    the first finishes its work."""
    await db.execute("CREATE TABLE t (id int)")
    optimizer = QueryOptimizer(db_pool, lock_timeout=5.0)

    async with locked(db, "t") as holder:
        calls = [
            asyncio.create_task(optimizer.vacuum(["t"])),
            asyncio.create_task(optimizer.analyze(["t"])),
        ]
        try:
            done, pending = await asyncio.wait(
                calls, timeout=STATS_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            await wait_until_blocked(db)
        finally:
            await holder.execute("COMMIT")
            results = await asyncio.gather(*calls, return_exceptions=True)

    assert (len(done), len(pending)) == (1, 1)
    refused = results[calls.index(done.pop())]
    assert isinstance(refused, MaintenanceRunning), refused
    ran = results[calls.index(pending.pop())]
    assert isinstance(ran, MaintenanceRun), ran
    assert outcomes(ran) == [("public.t", "done")]
    column: Column = "last_vacuum" if ran.operation == "vacuum" else "last_analyze"
    await wait_for_stat(db, "public.t", column)
    assert await advisory_lock_is_free(db)


async def test_the_advisory_lock_is_released_when_a_run_fails(
    db: Database, db_pool: ConnectionPool
) -> None:
    """A run refused after taking the lock (an unknown table is found out under it)
    gives the lock back, as does a successful one: another session can take it."""
    await db.execute("CREATE TABLE t (id int)")
    optimizer = QueryOptimizer(db_pool)

    with pytest.raises(UnknownTable):
        await optimizer.analyze(["nope"])
    assert await advisory_lock_is_free(db)
    await optimizer.analyze(["t"])
    assert await advisory_lock_is_free(db)


# --- table names are looked up, never pasted ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        HOSTILE,
        "y; DROP TABLE y",
        "pg_catalog.pg_class",
        "pg_class",
        "information_schema.tables",
        '"y"',
        "public.y.x",
    ],
)
async def test_a_name_that_is_not_one_of_the_tables_is_refused_before_anything_runs(
    db: Database, db_pool: ConnectionPool, name: str
) -> None:
    """vacuum(["t", name]) raises UnknownTable naming it; y still exists and neither t
    (listed first) nor y nor pg_class were vacuumed or analyzed."""
    await db.execute("CREATE TABLE t (id int); CREATE TABLE y (id int)")

    with pytest.raises(UnknownTable, match="not a table of this database"):
        await QueryOptimizer(db_pool).vacuum(["t", name])

    assert await db.fetchval("SELECT to_regclass('public.y') IS NOT NULL")
    for table in ("public.t", "public.y", "pg_catalog.pg_class"):
        assert await stat(db, table, "last_vacuum") is None, table
        assert await stat(db, table, "last_analyze") is None, table
    assert await advisory_lock_is_free(db)


async def test_an_unknown_operation_or_an_empty_name_is_refused(
    db: Database, db_pool: ConnectionPool
) -> None:
    """maintain("full") is InvalidOperation, an empty table name UnknownTable."""
    optimizer = QueryOptimizer(db_pool)
    with pytest.raises(InvalidOperation):
        await optimizer.maintain("full")
    with pytest.raises(UnknownTable):
        await optimizer.maintain("analyze", [""])


# --- lock_timeout and statement_timeout ---------------------------------------------------


async def pooled_session(pool: ConnectionPool) -> tuple[int, str, str]:
    """(backend pid, lock_timeout, statement_timeout) of a pooled connection."""
    async with pool.connection() as conn:
        row = tuple(
            (
                await conn.exec_driver_sql(
                    "SELECT pg_backend_pid(), current_setting('lock_timeout'),"
                    " current_setting('statement_timeout')"
                )
            ).one()
        )
    return int(row[0]), str(row[1]), str(row[2])


@pytest.mark.one_session
async def test_a_locked_table_is_skipped_after_lock_timeout_and_the_run_goes_on(
    db: Database,
) -> None:
    """With t held ACCESS EXCLUSIVE elsewhere, vacuum(["t", "u"]) at lock_timeout=0.2
    skips t (saying why) and vacuums u, in well under the default 5 s; the pooled
    connection it used (the pool's only one) has its timeouts reset afterwards."""
    await db.execute("CREATE TABLE t (id int); CREATE TABLE u (id int)")
    async with ConnectionPool(db.url, pool_size=1, max_overflow=0) as pool:
        before = await pooled_session(pool)
        async with locked(db, "t"):
            started = time.perf_counter()
            optimizer = QueryOptimizer(pool, lock_timeout=0.2)
            run = await asyncio.wait_for(optimizer.vacuum(["t", "u"]), STATS_TIMEOUT)
            elapsed = time.perf_counter() - started
        after = await pooled_session(pool)

    assert outcomes(run) == [("public.t", "skipped"), ("public.u", "done")]
    assert run.tables[0].detail == "its lock was not granted within 0.2 s"
    assert 0.15 <= run.tables[0].seconds < 2.0
    assert elapsed < 2.0
    assert await stat(db, "public.t", "last_vacuum") is None
    await wait_for_stat(db, "public.u", "last_vacuum")
    assert before == after
    assert after[1:] == ("0", "30s")  # the server default, and the pool's own
    assert await advisory_lock_is_free(db)


@pytest.mark.one_session
async def test_statement_timeout_cancels_a_statement_and_the_run_goes_on(
    db: Database,
) -> None:
    """statement_timeout counts time spent waiting for a lock, which makes it
    deterministic: with t held elsewhere, lock_timeout=5 and statement_timeout=0.2,
    t's VACUUM is cancelled at 0.2 s ("timed out"), u is still vacuumed, and the
    session's timeouts are reset afterwards.

    (A VACUUM of a big table racing a 50 ms limit may or may not finish in time, so
    it is not tested that way.)
    """
    await db.execute("CREATE TABLE t (id int); CREATE TABLE u (id int)")
    async with ConnectionPool(db.url, pool_size=1, max_overflow=0) as pool:
        optimizer = QueryOptimizer(pool, lock_timeout=5.0, statement_timeout=0.2)
        async with locked(db, "t"):
            started = time.perf_counter()
            run = await asyncio.wait_for(optimizer.vacuum(["t", "u"]), STATS_TIMEOUT)
            elapsed = time.perf_counter() - started
        after = await pooled_session(pool)

    assert outcomes(run) == [("public.t", "timed out"), ("public.u", "done")]
    assert run.tables[0].detail == "it ran past 0.2 s and was cancelled"
    assert elapsed < 2.0
    assert await stat(db, "public.t", "last_vacuum") is None
    await wait_for_stat(db, "public.u", "last_vacuum")
    assert after[1:] == ("0", "30s")
    assert await advisory_lock_is_free(db)


async def test_a_table_dropped_during_the_run_is_skipped_and_the_run_goes_on(
    db: Database, db_pool: ConnectionPool
) -> None:
    """Tables are resolved once, then run one by one; one dropped in between (here
    while the run waits for t) is skipped as gone, not a crash of the whole run that
    leaves the tables after it unmaintained."""
    await db.execute("CREATE TABLE t (id int); CREATE TABLE u (id int); CREATE TABLE w (id int)")
    optimizer = QueryOptimizer(db_pool, lock_timeout=5.0)

    async with locked(db, "t") as holder:
        task = asyncio.create_task(optimizer.vacuum(["t", "u", "w"]))
        try:
            await wait_until_blocked(db)
            await holder.execute("DROP TABLE u")
        finally:
            await holder.execute("COMMIT")
            run = await task

    assert outcomes(run) == [("public.t", "done"), ("public.u", "skipped"), ("public.w", "done")]
    assert "no longer exists" in (run.tables[1].detail or "")
    await wait_for_stat(db, "public.w", "last_vacuum")
    assert await advisory_lock_is_free(db)


# --- apply() ------------------------------------------------------------------------------


async def index_names(db: Database, table: str) -> set[str]:
    names = await db.fetchval(
        "SELECT array_agg(indexname::text) FROM pg_indexes WHERE tablename = $1", table
    )
    return set(names or ())


async def test_apply_drops_exactly_the_unused_index_the_report_names(
    db: Database, db_pool: ConnectionPool
) -> None:
    """The report's finding for the unused index t_v_idx carries DROP INDEX CONCURRENTLY;
    apply() runs it: that index is gone, the others (t_w_idx, the primary key) stay."""
    await db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v int, w int);"
        " CREATE INDEX t_v_idx ON t (v); CREATE INDEX t_w_idx ON t (w)"
    )
    optimizer = QueryOptimizer(db_pool)
    unused = (await optimizer.report()).check("unused_indexes").findings
    finding = {f.subject: f for f in unused}["public.t_v_idx"]
    assert finding.ddl == "DROP INDEX CONCURRENTLY public.t_v_idx;"

    seconds = await optimizer.apply(finding)

    assert seconds >= 0
    assert await index_names(db, "t") == {"t_pkey", "t_w_idx"}
    assert await advisory_lock_is_free(db)


@pytest.mark.parametrize("ddl", [None, "", "DROP TABLE public.t;", "TRUNCATE public.t;"])
async def test_apply_refuses_a_finding_without_applicable_ddl(
    db: Database, db_pool: ConnectionPool, ddl: str | None
) -> None:
    """A finding whose fix is not a statement, or not one a report makes, is
    OptimizerError and nothing runs."""
    await db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    finding = Finding(subject="public.t", detail="d", recommendation="r", ddl=ddl)

    with pytest.raises(OptimizerError, match=r"nothing to apply for public\.t"):
        await QueryOptimizer(db_pool).apply(finding)

    assert await db.fetchval("SELECT count(*) FROM t") == 1


async def test_replicas_on_one_schedule_maintain_once_per_interval(
    db: Database, db_pool: ConnectionPool
) -> None:
    """Three replicas' periodic runs in one interval: the first analyzes, the others
    find every table analyzed within the interval (PostgreSQL's own record) and skip;
    once the interval has passed, the next run analyzes again."""
    await db.execute("CREATE TABLE t (id int)")
    replicas = [QueryOptimizer(db_pool) for _ in range(3)]
    runs = [await optimizer.maintain_unless_done_within("analyze", 2.0) for optimizer in replicas]
    assert [run is not None for run in runs] == [True, False, False]
    first = await wait_for_stat(db, "public.t", "last_analyze")
    await asyncio.sleep(2.1)
    again = await replicas[1].maintain_unless_done_within("analyze", 2.0)
    assert again is not None
    assert outcomes(again) == [("public.t", "done")]
    assert (await stat(db, "public.t", "last_analyze") or first) > first


async def test_an_operator_s_vacuum_counts_for_the_schedule_but_not_an_analyze(
    db: Database, db_pool: ConnectionPool
) -> None:
    await db.execute("CREATE TABLE t (id int)")
    optimizer = QueryOptimizer(db_pool)
    await db.execute("ANALYZE t")
    await wait_for_stat(db, "public.t", "last_analyze")
    assert await optimizer.maintain_unless_done_within("analyze", 60.0) is None
    vacuumed = await optimizer.maintain_unless_done_within("vacuum", 60.0)
    assert vacuumed is not None
    assert outcomes(vacuumed) == [("public.t", "done")]
