"""QueryOptimizer.report() on real databases: each check speaks up on the condition it
names, stays quiet otherwise, and recommends a statement that does what it says.

Every PostgreSQL test gets a database of its own (the ``db`` fixture, dropped with
FORCE afterwards), so the statistics a check reads come only from what the test did.
PostgreSQL 15 flushes a session's table statistics at most once a second, so every
session that changes or reads data calls ``pg_stat_force_next_flush()`` before it goes
idle (the flush then happens before the server says it is ready, so it is done when the
call returns), and checks that read statistics are polled for at most five seconds
rather than waited for blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from service.db.diagnostics import TX_WRAPAROUND_LIMIT, Thresholds
from service.db.migrations import upgrade
from service.db.optimization import QueryOptimizer
from service.db.pool import ConnectionPool
from service.db.report import Check, Finding, Report
from tests.helpers import Database, scratch_database
from tests.support.private_postgres import private_postgres, private_standby

POLL_SECONDS = 5.0
"""How long a statistic may take to show up in a report."""

NO_STATEMENTS = "pg_stat_statements"

# Helpers.


@asynccontextmanager
async def session(db: Database) -> AsyncIterator[Any]:
    """An asyncpg connection to ``db`` whose statistics are flushed before it closes."""
    conn = await asyncpg.connect(db.dsn)
    try:
        yield conn
        await flush_stats(conn)
    finally:
        await conn.close()


async def flush_stats(conn: Any) -> None:
    """Make the server publish this session's pending statistics now."""
    await conn.execute("SELECT pg_stat_force_next_flush()")


async def run_sql(db: Database, *statements: str) -> None:
    """Run each statement (autocommit) in one session, flushing statistics after each.

    Flushing after each keeps counts in order: an insert counted after a later VACUUM
    or ANALYZE would otherwise add its rows again to numbers those have reset.
    """
    async with session(db) as conn:
        for statement in statements:
            await conn.execute(statement)
            await flush_stats(conn)


@asynccontextmanager
async def optimizer(db: Database, thresholds: Thresholds | None = None) -> AsyncIterator[Any]:
    """A QueryOptimizer on ``db`` with a two-connection pool (10 s statement timeout):
    behind PgBouncer, ``apply`` holds its lock on a second connection."""
    async with ConnectionPool(db.url, pool_size=2, max_overflow=0, statement_timeout=10) as pool:
        yield QueryOptimizer(pool, thresholds=thresholds)


async def make_report(db: Database, thresholds: Thresholds | None = None) -> Report:
    """One report on ``db``."""
    async with optimizer(db, thresholds) as opt:
        report: Report = await opt.report()
        return report


async def report_until(
    db: Database,
    condition: Callable[[Report], bool],
    what: str,
    thresholds: Thresholds | None = None,
) -> Report:
    """The first report (taken every 0.1 s, for up to POLL_SECONDS) where ``condition``
    holds; AssertionError naming ``what`` with the last report if none does."""
    async with optimizer(db, thresholds) as opt:
        deadline = asyncio.get_running_loop().time() + POLL_SECONDS
        while True:
            report: Report = await opt.report()
            if condition(report):
                return report
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not within {POLL_SECONDS} s: {what}\n{report.as_text()}")
            await asyncio.sleep(0.1)


def subjects(report: Report, check: str) -> list[str]:
    """The subjects of ``check``'s findings, in report order."""
    return [finding.subject for finding in report.check(check).findings]


def finding(report: Report, check: str, subject: str) -> Finding:
    """``check``'s finding about ``subject``; AssertionError (with the report) if none."""
    for found in report.check(check).findings:
        if found.subject == subject:
            return found
    raise AssertionError(f"{check} has no finding on {subject}\n{report.as_text()}")


def reports(check: str, subject: str) -> Callable[[Report], bool]:
    """A condition: ``check`` has a finding on ``subject``."""
    return lambda report: subject in subjects(report, check)


def quiet_on(check: str, subject: str) -> Callable[[Report], bool]:
    """A condition: ``check`` has no finding on ``subject``."""
    return lambda report: subject not in subjects(report, check)


def database_findings(report: Report) -> list[tuple[Check, Finding]]:
    """The report's findings but the server's settings: those judge the configuration
    of the shared test server, which a test cannot choose (the settings check has its
    own tests, on private clusters)."""
    return [(check, found) for check, found in report.findings if check.name != "settings"]


def assert_json_ready(report: Report) -> None:
    """``as_dict()`` survives json.dumps and comes back equal."""
    body = report.as_dict()
    assert json.loads(json.dumps(body)) == body


async def index_names(conn: Any, table: str) -> set[str]:
    """The names of the indexes on ``table`` (an unquoted name in schema public)."""
    found = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1", table
    )
    return {row["indexname"] for row in found}


@asynccontextmanager
async def background(conn: Any, query: str) -> AsyncIterator[asyncio.Task[Any]]:
    """``query`` running on ``conn`` as a task; on exit, cancelled if still running."""
    task = asyncio.create_task(conn.fetch(query))
    try:
        yield task
    finally:
        task.cancel()  # asyncpg then asks the server to cancel the query
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)


async def backend_state(db: Database, pid: int) -> str | None:
    """The state and wait event of backend ``pid``, as pg_stat_activity shows it."""
    async with session(db) as conn:
        row = await conn.fetchrow(
            "SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
    return None if row is None else f"{row['state']}/{row['wait_event_type']}"


async def wait_for_state(db: Database, pid: int, wanted: str) -> None:
    """Poll until backend ``pid`` is in ``wanted`` (``state/wait_event_type``)."""
    deadline = asyncio.get_running_loop().time() + POLL_SECONDS
    while (state := await backend_state(db, pid)) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"pid {pid} is {state}"
        await asyncio.sleep(0.05)


# Tests.


@pytest.mark.tools  # hypopg
async def test_healthy_database_has_no_findings(db: Database) -> None:
    """A small, analyzed and vacuumed table with a primary key gives no finding in any
    check that ran; the checks that need pg_stat_statements (and hypopg) say so instead
    of reporting nothing; the report is JSON-ready and its text names every check."""
    await run_sql(
        db,
        "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL)",
        "INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 20) AS i",
        "VACUUM (ANALYZE) items",
    )

    def settled(report: Report) -> bool:
        tables = {row["table"]: row for row in report.overview["tables"]}
        row = tables.get("public.items")
        return row is not None and row["live"] == 20 and row["last_analyze"] is not None

    report = await report_until(db, settled, "statistics of public.items")

    assert report.dialect == "postgresql"
    assert report.database == db.name
    assert report.server_version.startswith("15")
    ran = [check for check in report.checks if check.ran]
    assert len(ran) == len(report.checks) - 3  # no pg_stat_statements, hypopg, snapshots
    changes = report.check("changes")
    assert not changes.ran
    assert changes.note is not None
    assert "snapshot" in changes.note
    for check in ran:
        if check.name != "settings":
            assert check.findings == (), f"{check.name}: {check.findings}"
    assert database_findings(report) == []
    slow, suggested = report.check("slow_queries"), report.check("suggested_indexes")
    assert not slow.ran
    assert slow.note is not None
    assert NO_STATEMENTS in slow.note
    assert "shared_preload_libraries" in slow.note
    # Without hypopg the advisor says that first.
    assert not suggested.ran
    assert suggested.note is not None
    assert "hypopg" in suggested.note

    assert_json_ready(report)
    text = report.as_text()
    for check in report.checks:
        assert check.title in text
    assert "not run" in text

    # With hypopg present, what the advisor still lacks is pg_stat_statements.
    await run_sql(db, "CREATE EXTENSION hypopg")
    report = await make_report(db)
    suggested = report.check("suggested_indexes")
    assert not suggested.ran
    assert suggested.note is not None
    assert NO_STATEMENTS in suggested.note
    assert "hypopg" not in suggested.note
    assert report.overview["hypopg"] is True
    assert database_findings(report) == []

    # Created but not preloaded (this server's case): the view raises, and both say so.
    await run_sql(db, "CREATE EXTENSION pg_stat_statements")
    report = await make_report(db)
    for name in ("slow_queries", "suggested_indexes"):
        check = report.check(name)
        assert not check.ran, name
        assert check.note is not None
        assert check.note.startswith("pg_stat_statements cannot be read"), check.note
    assert database_findings(report) == []
    assert_json_ready(report)


async def test_unused_index_reported_until_it_is_scanned(db: Database) -> None:
    """A non-unique index that was never scanned is reported with the DROP to run; a
    unique one (it enforces a rule) and the primary key are not; once the index has
    served more than 50 scans it is no longer reported."""
    await run_sql(
        db,
        "CREATE TABLE t (id integer PRIMARY KEY, a integer NOT NULL, b integer NOT NULL)"
        " WITH (autovacuum_enabled = false)",
        "INSERT INTO t SELECT i, i % 100, i FROM generate_series(1, 1000) AS i",
        "CREATE INDEX t_a_idx ON t (a)",
        "CREATE UNIQUE INDEX t_b_key ON t (b)",
        "VACUUM (ANALYZE) t",
    )
    report = await make_report(db)
    unused = finding(report, "unused_indexes", "public.t_a_idx")
    assert unused.ddl == "DROP INDEX CONCURRENTLY public.t_a_idx;"
    assert unused.data["scans"] == 0
    assert "public.t" in unused.detail
    assert subjects(report, "unused_indexes") == ["public.t_a_idx"]
    assert_json_ready(report)

    async with session(db) as conn:
        await conn.execute("SET enable_seqscan = off")
        lookup = await conn.prepare("SELECT * FROM t WHERE a = $1")
        for value in range(60):
            assert len(await lookup.fetch(value % 100)) == 10
    report = await report_until(
        db, quiet_on("unused_indexes", "public.t_a_idx"), "t_a_idx no longer unused"
    )
    assert report.check("unused_indexes").findings == ()


async def test_duplicate_indexes(db: Database) -> None:
    """An index whose columns start another btree index's (same method and predicate)
    is reported as covered by it; a partial or hash index on the same column is not;
    of two identical indexes exactly one is reported, covered by the other."""
    await run_sql(
        db,
        "CREATE TABLE t1 (a integer, b integer)",
        "CREATE INDEX a_idx ON t1 (a)",
        "CREATE INDEX ab_idx ON t1 (a, b)",
        "CREATE TABLE t2 (a integer, b integer)",
        "CREATE INDEX t2_ab_idx ON t2 (a, b)",
        "CREATE INDEX t2_a_positive_idx ON t2 (a) WHERE a > 0",
        "CREATE INDEX t2_a_hash_idx ON t2 USING hash (a)",
        "CREATE TABLE t3 (a integer)",
        "CREATE INDEX t3_first_idx ON t3 (a)",
        "CREATE INDEX t3_second_idx ON t3 (a)",
    )
    report = await make_report(db)
    found = subjects(report, "duplicate_indexes")

    covered = finding(report, "duplicate_indexes", "public.a_idx")
    assert covered.data["covered_by"] == "public.ab_idx"
    assert covered.ddl == "DROP INDEX CONCURRENTLY public.a_idx;"
    assert "public.ab_idx" not in found

    assert not [name for name in found if name.startswith("public.t2_")], found

    identical = {"public.t3_first_idx", "public.t3_second_idx"}
    twins = [name for name in found if name in identical]
    assert len(twins) == 1, found
    (other,) = identical - set(twins)
    assert finding(report, "duplicate_indexes", twins[0]).data["covered_by"] == other

    assert len(found) == 2, found
    assert_json_ready(report)


async def test_invalid_index_from_failed_concurrent_build(db: Database) -> None:
    """A CREATE UNIQUE INDEX CONCURRENTLY that fails on duplicates leaves an invalid index:
    reported as critical with the DROP to run, and not judged by the other index checks;
    running that DROP removes it and the finding."""
    await run_sql(
        db,
        "CREATE TABLE t (a integer)",
        "INSERT INTO t SELECT i % 10 FROM generate_series(1, 100) AS i",
    )
    async with session(db) as conn:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY t_a_key ON t (a)")
        assert await index_names(conn, "t") == {"t_a_key"}

    report = await make_report(db)
    invalid = finding(report, "invalid_indexes", "public.t_a_key")
    assert invalid.severity == "critical"
    assert invalid.ddl == "DROP INDEX CONCURRENTLY public.t_a_key;"
    assert subjects(report, "invalid_indexes") == ["public.t_a_key"]
    assert "public.t_a_key" not in subjects(report, "unused_indexes")
    assert "public.t_a_key" not in subjects(report, "duplicate_indexes")
    assert_json_ready(report)

    async with session(db) as conn:
        await conn.execute(invalid.ddl)
        assert await index_names(conn, "t") == set()
    assert (await make_report(db)).check("invalid_indexes").findings == ()


async def test_missing_index_on_big_table_scanned_sequentially(db: Database) -> None:
    """A table of 10,000 rows with no index, read 60 times by sequential scans, is
    reported as needing one; a small table read the same way is not."""
    await run_sql(
        db,
        "CREATE TABLE big (a integer, b integer) WITH (autovacuum_enabled = false)",
        "INSERT INTO big SELECT i % 1000, i FROM generate_series(1, 10000) AS i",
        "CREATE TABLE small (a integer, b integer) WITH (autovacuum_enabled = false)",
        "INSERT INTO small SELECT i % 10, i FROM generate_series(1, 100) AS i",
    )
    async with session(db) as conn:
        for _ in range(60):
            assert await conn.fetchval("SELECT count(*) FROM big WHERE a = 5") == 10
            assert await conn.fetchval("SELECT count(*) FROM small WHERE a = 5") == 10

    report = await report_until(db, reports("missing_indexes", "public.big"), "public.big")
    missing = finding(report, "missing_indexes", "public.big")
    assert missing.data["seq_scan"] >= 60
    assert missing.data["idx_scan"] == 0
    assert missing.data["rows"] == 10_000
    assert missing.data["index_share"] == 0.0
    assert subjects(report, "missing_indexes") == ["public.big"]
    assert_json_ready(report)


async def test_dead_rows_and_never_analyzed_tables(db: Database) -> None:
    """A table with 60% of its 20,000 rows deleted (autovacuum off) is reported with the
    VACUUM to run, and running it clears the finding; a table never analyzed is reported
    with the ANALYZE to run, and running that clears it too."""
    await run_sql(
        db,
        "CREATE TABLE dead (id integer, pad text) WITH (autovacuum_enabled = false)",
        "INSERT INTO dead SELECT i, repeat('x', 20) FROM generate_series(1, 20000) AS i",
        "DELETE FROM dead WHERE id % 5 < 3",
        "CREATE TABLE fresh (id integer) WITH (autovacuum_enabled = false)",
        "INSERT INTO fresh SELECT generate_series(1, 100)",
    )

    def both(report: Report) -> bool:
        found = subjects(report, "vacuum_analyze")
        return "public.dead" in found and "public.fresh" in found

    report = await report_until(db, both, "public.dead and public.fresh")
    vacuum = finding(report, "vacuum_analyze", "public.dead")
    assert vacuum.ddl == "VACUUM (ANALYZE) public.dead;"
    assert vacuum.data["dead"] == 12_000
    assert vacuum.data["live"] == 8_000
    analyze = finding(report, "vacuum_analyze", "public.fresh")
    assert analyze.ddl == "ANALYZE public.fresh;"
    assert "never" in analyze.detail
    assert len(report.check("vacuum_analyze").findings) == 2
    assert_json_ready(report)

    assert vacuum.ddl is not None
    assert analyze.ddl is not None
    await run_sql(db, vacuum.ddl, analyze.ddl)
    report = await report_until(
        db, lambda r: not r.check("vacuum_analyze").findings, "no vacuum_analyze finding"
    )
    tables = {row["table"]: row for row in report.overview["tables"]}
    assert tables["public.dead"]["dead"] == 0
    assert tables["public.dead"]["last_vacuum"] is not None
    assert tables["public.fresh"]["last_analyze"] is not None


async def test_sequence_near_int4_limit(db: Database) -> None:
    """A serial (int4) column whose sequence is at 2,000,000,000 is reported against the
    int4 limit with the ALTER to widen it; a bigserial at the same value is not; after
    running that ALTER the column takes values past the int4 limit and the report is
    quiet."""
    await run_sql(
        db,
        "CREATE TABLE s (id serial PRIMARY KEY)",
        "SELECT setval('s_id_seq', 2000000000)",
        "CREATE TABLE b (id bigserial PRIMARY KEY)",
        "SELECT setval('b_id_seq', 2000000000)",
    )
    report = await make_report(db)
    seq = finding(report, "sequences", "public.s_id_seq")
    assert "2147483647" in seq.detail
    assert seq.data["max_value"] == 2_147_483_647
    assert seq.data["column_type"] == "integer"
    # Widening the column alone leaves the serial's sequence AS integer, still stopping
    # at 2147483647: the sequence must widen too.
    assert seq.ddl == (
        "ALTER TABLE public.s ALTER COLUMN id TYPE bigint;"
        " ALTER SEQUENCE public.s_id_seq AS bigint;"
    )
    assert seq.severity == "warning"
    assert subjects(report, "sequences") == ["public.s_id_seq"]
    assert_json_ready(report)

    assert seq.ddl is not None
    await run_sql(db, seq.ddl)
    async with session(db) as conn:
        await conn.execute("SELECT setval('s_id_seq', 2147483647)")
        assert await conn.fetchval("INSERT INTO s DEFAULT VALUES RETURNING id") == 2_147_483_648
    assert (await make_report(db)).check("sequences").findings == ()


async def test_thresholds_make_quiet_checks_speak(db: Database) -> None:
    """Transaction-ID wraparound, connections and cache hit ratio are quiet on a fresh
    database at the default thresholds, and each fires when its threshold is moved past
    what the database shows. The cache check copes with a kind of block that saw no
    access at all (this database has no index)."""
    await run_sql(
        db,
        "CREATE TABLE t (a integer)",
        "INSERT INTO t SELECT generate_series(1, 1000)",
        "VACUUM (ANALYZE) t",
        "SELECT count(*) FROM t",
    )
    report = await report_until(
        db,
        lambda r: bool(r.overview["heap_cache_hit_ratio"]),
        "heap block statistics of public.t",
    )
    for name in ("transaction_id_wraparound", "connections", "cache_hit_ratio"):
        assert report.check(name).findings == (), name

    report = await make_report(db, Thresholds(autovacuum_ids_left=10**10))
    due = finding(report, "transaction_id_wraparound", "public.t")
    assert due.ddl == "VACUUM (FREEZE, ANALYZE) public.t;"
    assert due.severity == "warning"
    assert len(report.check("transaction_id_wraparound").findings) > 1  # catalogs are due too
    assert_json_ready(report)

    report = await make_report(db, Thresholds(tx_ids_left=TX_WRAPAROUND_LIMIT))
    danger = finding(report, "transaction_id_wraparound", "public.t")
    assert danger.severity == "critical"
    assert danger.data["left"] == TX_WRAPAROUND_LIMIT - danger.data["age"]

    report = await make_report(db, Thresholds(total_connections=0))
    crowded = finding(report, "connections", "connections")
    assert crowded.data["total"] >= 1

    report = await make_report(db, Thresholds(cache_min_blocks=0, cache_hit_ratio=1.01))
    assert subjects(report, "cache_hit_ratio") == ["heap blocks"]
    cache = finding(report, "cache_hit_ratio", "heap blocks")
    assert 0 < cache.data["ratio"] <= 1
    assert cache.data["hit"] > 0
    assert_json_ready(report)


async def test_long_running_query_is_named_by_pid(db: Database) -> None:
    """A query running longer than long_running_seconds is reported by its pid (not at
    the default of 60 s), and the statement the finding gives cancels it."""
    async with session(db) as sleeper:
        pid = sleeper.get_server_pid()
        async with background(sleeper, "SELECT pg_sleep(10)") as task:
            await wait_for_state(db, pid, "active/Timeout")
            assert f"pid {pid}" not in subjects(await make_report(db), "long_running_queries")

            report = await report_until(
                db,
                reports("long_running_queries", f"pid {pid}"),
                f"pid {pid} as long-running",
                Thresholds(long_running_seconds=0.5),
            )
            long = finding(report, "long_running_queries", f"pid {pid}")
            assert "pg_sleep(10)" in long.data["query"]
            assert long.data["seconds"] >= 0.5
            assert long.ddl == f"SELECT pg_cancel_backend({pid});"
            assert subjects(report, "long_running_queries") == [f"pid {pid}"]
            assert_json_ready(report)

            async with session(db) as conn:
                assert await conn.fetchval(long.ddl.rstrip(";")) is True
            with pytest.raises(asyncpg.QueryCanceledError):
                await asyncio.wait_for(task, POLL_SECONDS)


async def test_blocked_query_is_named_by_pid(db: Database) -> None:
    """A query waiting on another session's lock is reported by its pid, as critical,
    with the blocking pid. The report does not hang on that lock itself: the check that
    must deparse the table's indexes (which needs a lock on the table) says it was
    skipped. Once the blocker rolls back, the blocked query finishes, and the next report
    runs every check and is quiet."""
    await run_sql(
        db,
        "CREATE TABLE t (id integer PRIMARY KEY, a integer)",
        "INSERT INTO t SELECT i, i FROM generate_series(1, 10) AS i",
        "VACUUM (ANALYZE) t",
    )
    async with session(db) as holder, session(db) as waiter:
        blocker = holder.transaction()
        await blocker.start()
        try:
            await holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            pid = waiter.get_server_pid()
            async with background(waiter, "SELECT * FROM t") as task:
                await wait_for_state(db, pid, "active/Lock")
                report = await report_until(
                    db, reports("blocked_queries", f"pid {pid}"), f"pid {pid} as blocked"
                )
                blocked = finding(report, "blocked_queries", f"pid {pid}")
                assert blocked.severity == "critical"
                assert blocked.data["blocked_by"] == [holder.get_server_pid()]
                assert "LOCK TABLE t" in blocked.data["blocking_query"]
                assert "SELECT * FROM t" in blocked.data["query"]
                assert subjects(report, "blocked_queries") == [f"pid {pid}"]
                skipped = report.check("duplicate_indexes")
                assert not skipped.ran
                assert skipped.note is not None
                assert "not granted" in skipped.note
                assert_json_ready(report)

                await blocker.rollback()
                assert len(await asyncio.wait_for(task, POLL_SECONDS)) == 10
        finally:
            if holder.is_in_transaction():
                await blocker.rollback()
    report = await make_report(db)
    assert [check.name for check in report.checks if not check.ran] == [
        "slow_queries",
        "suggested_indexes",
        "changes",
    ]
    assert database_findings(report) == []


async def test_identifiers_are_quoted_in_ddl(db: Database) -> None:
    """An unused index named ``i"x`` on a table named ``we"ird`` gets DDL with the name
    quoted as SQL needs it; running that DDL drops that index and nothing else."""
    await run_sql(
        db,
        'CREATE TABLE "we""ird" (id integer PRIMARY KEY, v integer, w integer)',
        'INSERT INTO "we""ird" SELECT i, i, i FROM generate_series(1, 100) AS i',
        'CREATE INDEX "i""x" ON "we""ird" (v)',
        'CREATE INDEX ix ON "we""ird" (w)',
    )
    report = await make_report(db)
    unused = finding(report, "unused_indexes", 'public."i""x"')
    assert unused.ddl == 'DROP INDEX CONCURRENTLY public."i""x";'
    assert 'public."we""ird"' in unused.detail
    assert sorted(subjects(report, "unused_indexes")) == ['public."i""x"', "public.ix"]
    assert_json_ready(report)

    async with session(db) as conn:
        assert await index_names(conn, 'we"ird') == {'we"ird_pkey', 'i"x', "ix"}
        await conn.execute(unused.ddl)
        assert await index_names(conn, 'we"ird') == {'we"ird_pkey', "ix"}
        assert await conn.fetchval('SELECT count(*) FROM "we""ird"') == 100
    assert subjects(await make_report(db), "unused_indexes") == ["public.ix"]


async def test_foreign_keys_without_an_index(db: Database) -> None:
    """A foreign key is reported when no valid, non-partial index starts with its
    columns (in any order); the CREATE INDEX it recommends makes the finding go."""
    await run_sql(
        db,
        "CREATE TABLE customers (id integer PRIMARY KEY, region integer, UNIQUE (id, region))",
        "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer REFERENCES customers)",
        "INSERT INTO customers SELECT i, i % 5 FROM generate_series(1, 50) AS i",
        "INSERT INTO orders SELECT i, 1 + i % 50 FROM generate_series(1, 500) AS i",
        # Covered: the primary key starts with the key's column.
        "CREATE TABLE lines (order_id integer REFERENCES orders, n integer,"
        " PRIMARY KEY (order_id, n))",
        # Covered: two columns, indexed in the other order, then a third.
        "CREATE TABLE visits (customer integer, region integer, at integer,"
        " FOREIGN KEY (customer, region) REFERENCES customers (id, region))",
        "CREATE INDEX visits_idx ON visits (region, customer, at)",
        # Not covered: a partial index, and an index where the column comes second.
        'CREATE TABLE "re""turns" (customer_id integer REFERENCES customers, n integer)',
        'CREATE INDEX returns_partial ON "re""turns" (customer_id) WHERE customer_id > 0',
        'CREATE INDEX returns_second ON "re""turns" (n, customer_id)',
    )
    report = await make_report(db)
    assert subjects(report, "unindexed_foreign_keys") == [
        'public."re""turns"."re""turns_customer_id_fkey"',
        "public.orders.orders_customer_id_fkey",
    ]
    orders = finding(report, "unindexed_foreign_keys", "public.orders.orders_customer_id_fkey")
    assert orders.ddl == "CREATE INDEX CONCURRENTLY ON public.orders (customer_id);"
    assert "public.customers" in orders.detail
    assert orders.data["columns"] == ["customer_id"]
    weird = finding(
        report, "unindexed_foreign_keys", 'public."re""turns"."re""turns_customer_id_fkey"'
    )
    assert weird.ddl == 'CREATE INDEX CONCURRENTLY ON public."re""turns" (customer_id);'
    assert_json_ready(report)

    async with optimizer(db) as opt:
        await opt.apply(orders)
        await opt.apply(weird)
    assert subjects(await make_report(db), "unindexed_foreign_keys") == []


async def test_constraints_added_not_valid(db: Database) -> None:
    """CHECK and FOREIGN KEY constraints added NOT VALID are reported with the VALIDATE
    to run; a validated one is not. VALIDATE succeeds where every row holds, and fails
    naming the rule where one does not."""
    await run_sql(
        db,
        "CREATE TABLE parent (id integer PRIMARY KEY)",
        "CREATE TABLE child (parent_id integer)",
        "CREATE INDEX ON child (parent_id)",
        "ALTER TABLE child ADD CONSTRAINT child_parent FOREIGN KEY (parent_id)"
        " REFERENCES parent NOT VALID",
        "CREATE TABLE amounts (n integer)",
        "INSERT INTO amounts VALUES (-1), (5)",
        "ALTER TABLE amounts ADD CONSTRAINT n_positive CHECK (n > 0) NOT VALID",
        "ALTER TABLE amounts ADD CONSTRAINT n_small CHECK (n < 100)",
    )
    report = await make_report(db)
    assert subjects(report, "not_valid_constraints") == [
        "public.amounts.n_positive",
        "public.child.child_parent",
    ]
    positive = finding(report, "not_valid_constraints", "public.amounts.n_positive")
    assert positive.ddl == "ALTER TABLE public.amounts VALIDATE CONSTRAINT n_positive;"
    assert "CHECK ((n > 0))" in positive.detail
    child = finding(report, "not_valid_constraints", "public.child.child_parent")
    assert child.data["kind"] == "foreign key"
    assert_json_ready(report)

    async with session(db) as conn:
        assert child.ddl is not None
        assert positive.ddl is not None
        await conn.execute(child.ddl)
        with pytest.raises(asyncpg.CheckViolationError, match="n_positive"):
            await conn.execute(positive.ddl)
        await conn.execute("DELETE FROM amounts WHERE n <= 0")
        await conn.execute(positive.ddl)
    assert subjects(await make_report(db), "not_valid_constraints") == []


async def test_bloated_table_and_index(db: Database) -> None:
    """A table rewritten three times with autovacuum off, then vacuumed, keeps three
    quarters of its pages empty, and its primary key too: both are reported, estimated
    from statistics, then measured once pgstattuple is installed; after the VACUUM FULL
    the finding recommends, neither is. Asked for 90% waste, the check stays quiet."""
    limits = Thresholds(bloat_min_bytes=1024 * 1024)
    await run_sql(
        db,
        "CREATE TABLE events (id integer PRIMARY KEY, payload text)"
        " WITH (autovacuum_enabled = false)",
        "INSERT INTO events SELECT i, repeat('x', 100) FROM generate_series(1, 50000) AS i",
        "UPDATE events SET payload = repeat('y', 100)",
        "UPDATE events SET payload = repeat('z', 100)",
        "UPDATE events SET payload = repeat('w', 100)",
        "VACUUM (ANALYZE) events",
        # The same, never analyzed: nothing to estimate from, measured once it can be.
        "CREATE TABLE unanalyzed (n integer, payload text) WITH (autovacuum_enabled = false)",
        "INSERT INTO unanalyzed SELECT i, repeat('x', 100) FROM generate_series(1, 50000) AS i",
        "UPDATE unanalyzed SET payload = repeat('y', 100)",
        "UPDATE unanalyzed SET payload = repeat('z', 100)",
        "VACUUM unanalyzed",
        "CREATE TABLE tidy (id integer PRIMARY KEY, payload text)",
        "INSERT INTO tidy SELECT i, repeat('x', 100) FROM generate_series(1, 50000) AS i",
        "ANALYZE tidy",
    )
    report = await make_report(db, limits)
    # Without pgstattuple, the never-analyzed table is beyond the estimate.
    assert subjects(report, "bloat") == ["public.events", "public.events_pkey"]
    table = finding(report, "bloat", "public.events")
    assert table.ddl == "VACUUM (FULL, ANALYZE) public.events;"
    assert table.data["wasted"] > 0.6 * table.data["size"], table.data
    assert table.data["measured"] is False
    assert "estimated" in table.detail
    index = finding(report, "bloat", "public.events_pkey")
    assert index.ddl == "REINDEX INDEX CONCURRENTLY public.events_pkey;"
    assert report.check("bloat").note is not None
    assert "pgstattuple" in (report.check("bloat").note or "")
    assert_json_ready(report)
    fussy = Thresholds(bloat_min_bytes=1024 * 1024, bloat_share=0.9)
    assert subjects(await make_report(db, fussy), "bloat") == []  # three quarters: under 90%

    await run_sql(db, "CREATE EXTENSION pgstattuple")
    report = await make_report(db, limits)
    measured = finding(report, "bloat", "public.events")
    assert measured.data["measured"] is True
    assert measured.data["wasted"] > 0.6 * measured.data["size"], measured.data
    assert "pgstattuple" in measured.detail
    assert report.check("bloat").note is None
    unanalyzed = finding(report, "bloat", "public.unanalyzed")
    assert unanalyzed.data["measured"] is True
    assert unanalyzed.ddl == "VACUUM (FULL, ANALYZE) public.unanalyzed;"

    assert table.ddl is not None
    await run_sql(db, table.ddl.rstrip(";"), unanalyzed.ddl.rstrip(";"))
    assert subjects(await make_report(db, limits), "bloat") == []


@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_inactive_replication_slots() -> None:
    """On a private cluster: a physical slot that reserved WAL and has no consumer is
    reported with the WAL it holds and the call that drops it; once dropped, the check
    is quiet."""
    async with private_postgres(["max_wal_size=64MB"]) as cluster:
        db = Database("postgres", cluster.dsn)
        report = await make_report(db)
        assert report.check("replication_slots").findings == ()
        async with session(db) as conn:
            await conn.execute("SELECT pg_create_physical_replication_slot('old_standby', true)")
            await conn.execute("CREATE TABLE filler AS SELECT i FROM generate_series(1, 100000) i")
        report = await make_report(db)
        slot = finding(report, "replication_slots", "old_standby")
        assert slot.ddl == "SELECT pg_drop_replication_slot('old_standby');"
        assert slot.data["type"] == "physical"
        assert slot.data["retained"] > 1_000_000, slot.data
        assert "of WAL" in slot.detail
        assert slot.severity == "warning"
        assert_json_ready(report)
        async with session(db) as conn:
            await conn.execute(slot.ddl)
        assert (await make_report(db)).check("replication_slots").findings == ()


@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_replication_lag_seen_from_the_primary_and_the_standby() -> None:
    """A private primary and a streaming standby of it: quiet while the standby keeps
    up; with its replay paused and WAL written on the primary, the standby's report
    names the pause and the statement that resumes it, and the primary's names the
    standby and the bytes it has not replayed; quiet again once replay resumes."""
    limits = Thresholds(replication_lag_seconds=1, replication_lag_bytes=1024 * 1024)
    async with (
        asyncio.timeout(90),
        private_postgres() as primary,
        private_standby(primary) as standby,
    ):
        on_primary, on_standby = (
            Database("postgres", primary.dsn),
            Database("postgres", standby.dsn),
        )
        async with session(on_primary) as conn:
            await conn.execute("CREATE TABLE marks (n integer)")
        for db in (on_primary, on_standby):
            await report_until(db, quiet_on("replication_lag", "this standby"), "caught up", limits)
            assert (await make_report(db, limits)).check("replication_lag").findings == ()
        async with session(on_standby) as conn:
            await conn.execute("SELECT pg_wal_replay_pause()")
        async with session(on_primary) as conn:
            await conn.execute("INSERT INTO marks SELECT i FROM generate_series(1, 200000) AS i")
        await asyncio.sleep(1.5)  # past the one-second threshold

        report = await report_until(
            on_standby, reports("replication_lag", "this standby"), "the paused standby", limits
        )
        paused = finding(report, "replication_lag", "this standby")
        assert paused.ddl == "SELECT pg_wal_replay_resume();"
        assert paused.data["paused"] is True
        assert paused.data["bytes"] > 1024 * 1024, paused.data
        assert_json_ready(report)

        report = await report_until(
            on_primary,
            lambda r: bool(r.check("replication_lag").findings),
            "the standby, seen from the primary",
            limits,
        )
        (behind,) = report.check("replication_lag").findings
        assert behind.subject == "walreceiver (127.0.0.1)"
        assert behind.data["bytes"] > 1024 * 1024, behind.data
        assert behind.ddl is None

        async with session(on_standby) as conn:
            await conn.execute(paused.ddl)
        for db in (on_standby, on_primary):
            await report_until(
                db,
                lambda r: r.check("replication_lag").findings == (),
                "caught up again",
                limits,
            )


@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_server_settings() -> None:
    """A private cluster with unsafe settings and a max_wal_size that forces
    checkpoints: each is reported with the ALTER SYSTEM that fixes it (the statements
    run); a cluster with PostgreSQL's defaults (and fsync on) gets no finding."""
    limits = Thresholds(forced_checkpoints=2)
    bad = ["autovacuum=off", "full_page_writes=off", "max_wal_size=32MB"]
    async with asyncio.timeout(90), private_postgres(bad) as cluster:  # fsync=off: its own
        db = Database("postgres", cluster.dsn)
        await run_sql(
            db,
            "CREATE TABLE filler (n bigint, pad text)",
            "INSERT INTO filler SELECT i, repeat('x', 200) FROM generate_series(1, 400000) AS i",
        )
        report = await report_until(db, reports("settings", "max_wal_size"), "forced", limits)
        assert sorted(subjects(report, "settings")) == [
            "autovacuum",
            "fsync",
            "full_page_writes",
            "max_wal_size",
        ]
        fsync = finding(report, "settings", "fsync")
        assert fsync.ddl == "ALTER SYSTEM SET fsync = on; SELECT pg_reload_conf();"
        assert fsync.severity == "critical"
        wal = finding(report, "settings", "max_wal_size")
        assert wal.ddl == "ALTER SYSTEM SET max_wal_size = '64MB'; SELECT pg_reload_conf();"
        assert wal.data["forced"] > wal.data["timed"]
        assert_json_ready(report)
        async with session(db) as conn:  # valid statements (ALTER SYSTEM one at a time)
            for found in report.check("settings").findings:
                assert found.ddl is not None
                for statement in found.ddl.split("; "):
                    await conn.execute(statement)
            assert (
                await conn.fetchval(
                    "SELECT setting FROM pg_file_settings WHERE name = 'max_wal_size'"
                    " AND sourcefile LIKE '%postgresql.auto.conf'"
                )
                == "64MB"
            )
    async with private_postgres(["fsync=on"]) as cluster:
        report = await make_report(Database("postgres", cluster.dsn), limits)
        assert report.check("settings").findings == ()


EVERY_CALL = Thresholds(slow_query_ms=0, slow_query_calls=100)
"""Every statement run 100 times is slow enough to be advised on."""


@asynccontextmanager
async def statements_database(prefix: str, *setup: str) -> AsyncIterator[Database]:
    """A scratch database on a private cluster that preloads pg_stat_statements, with
    the extension created, then built by ``setup``."""
    async with (
        private_postgres(["shared_preload_libraries=pg_stat_statements"]) as cluster,
        scratch_database(prefix, cluster.dsn) as db,
    ):
        await run_sql(db, "CREATE EXTENSION pg_stat_statements", *setup)
        yield db


@asynccontextmanager
async def advised_database(*setup: str) -> AsyncIterator[Database]:
    """:func:`statements_database` with hypopg too; after ``setup`` the load is forgotten
    (``pg_stat_statements_reset()``), as the advice weighs the writes
    pg_stat_statements holds against the reads."""
    setup = ("CREATE EXTENSION hypopg", *setup, "SELECT pg_stat_statements_reset()")
    async with statements_database("svc_adv", *setup) as db:
        yield db


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_slow_queries_and_suggested_indexes() -> None:
    """With pg_stat_statements preloaded and hypopg installed (a private cluster), a
    repeated sequential-scan query is listed as slow and gets the index that halves its
    plan's cost, as the exact CREATE INDEX to run; a query on the primary key, slow by
    the same lowered threshold, gets no suggestion. The load is forgotten first
    (``pg_stat_statements_reset()``): the advice weighs the rows the workload writes."""
    async with (
        asyncio.timeout(55),
        advised_database(
            "CREATE TABLE t (id serial PRIMARY KEY, a integer, b integer)",
            "INSERT INTO t (a, b) SELECT i % 100, i % 10000 FROM generate_series(1, 200000) AS i",
            "ANALYZE t",
        ) as db,
    ):
        async with session(db) as conn:
            by_b = await conn.prepare("SELECT * FROM t WHERE b = $1")
            by_id = await conn.prepare("SELECT * FROM t WHERE id = $1")
            for value in range(120):
                assert len(await by_b.fetch(value)) == 20
                assert len(await by_id.fetch(value + 1)) == 1

        report = await make_report(db, EVERY_CALL)
        assert report.overview["pg_stat_statements"] is True
        assert report.overview["hypopg"] is True
        slow = report.check("slow_queries")
        assert slow.ran
        queries = {f.data["query"]: f for f in slow.findings}
        assert set(queries) == {"SELECT * FROM t WHERE b = $1", "SELECT * FROM t WHERE id = $1"}
        scan = queries["SELECT * FROM t WHERE b = $1"]
        lookup = queries["SELECT * FROM t WHERE id = $1"]
        assert scan.data["calls"] == 120

        suggested = report.check("suggested_indexes")
        assert suggested.ran, suggested.note
        index = finding(report, "suggested_indexes", "public.t (b)")
        assert index.ddl == "CREATE INDEX CONCURRENTLY ON public.t (b);"
        assert index.data["table"] == "public.t"
        assert index.data["columns"] == ["b"]
        assert index.data["cost_after"] < index.data["cost_before"] / 2
        assert index.data["queryids"] == [scan.data["queryid"]]
        assert index.data["rows_written"] == 0
        assert subjects(report, "suggested_indexes") == ["public.t (b)"]
        assert lookup.data["queryid"] not in index.data["queryids"]
        assert_json_ready(report)

        # Nothing was built: hypothetical indexes exist only in the advisor's session.
        async with session(db) as conn:
            assert await index_names(conn, "t") == {"t_pkey"}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_a_suggested_index_covers_the_foreign_key_it_indexes() -> None:
    """A slow ``ORDER BY ... LIMIT`` that walks the index of its sort column and filters
    every row on an unindexed foreign key: the advisor reads that filtered index scan
    too and suggests the key's column, and the foreign-key check then leaves the key
    out (one index serves both), saying so."""
    async with (
        asyncio.timeout(55),
        advised_database(
            "CREATE TABLE customers (id integer PRIMARY KEY)",
            "INSERT INTO customers SELECT i FROM generate_series(1, 10000) AS i",
            "CREATE TABLE orders (id serial PRIMARY KEY, customer_id integer NOT NULL"
            " REFERENCES customers, created_at integer NOT NULL)",
            "INSERT INTO orders (customer_id, created_at)"
            " SELECT 1 + i % 10000, i FROM generate_series(1, 200000) AS i",
            "CREATE INDEX orders_created_at ON orders (created_at)",
            "CREATE TABLE other (customer_id integer REFERENCES customers)",
            "ANALYZE",
        ) as db,
    ):
        async with session(db) as conn:
            latest = await conn.prepare(
                "SELECT id FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 5"
            )
            for value in range(120):
                assert len(await latest.fetch(value + 1)) == 5
        report = await make_report(db, EVERY_CALL)
    suggested = report.check("suggested_indexes")
    (index,) = suggested.findings
    assert index.data["table"] == "public.orders"
    assert index.data["columns"][0] == "customer_id"
    keys = report.check("unindexed_foreign_keys")
    assert subjects(report, "unindexed_foreign_keys") == ["public.other.other_customer_id_fkey"]
    assert keys.note == "1 covered by a suggested index"


async def call(db: Database, query: str, values: Iterable[int]) -> None:
    """Run ``query`` once per value, prepared (so pg_stat_statements counts one statement)."""
    async with session(db) as conn:
        prepared = await conn.prepare(query)
        for value in values:
            await prepared.fetch(value)


def findings_on(report: Report, table: str) -> list[Finding]:
    return [f for f in report.check("suggested_indexes").findings if f.data["table"] == table]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_one_index_for_the_statements_it_serves_and_writes_weigh_against_it() -> None:
    """The advice is for the workload: two slow statements filtering on the same column
    get one index between them, and an index on a table the workload writes to is
    suggested only once it saves the reads more time than it would add to the writes
    (both from pg_stat_statements)."""
    async with (
        asyncio.timeout(90),
        advised_database(
            "CREATE TABLE t (id serial PRIMARY KEY, a integer, b integer)",
            "INSERT INTO t (a, b) SELECT i % 100, i % 10000 FROM generate_series(1, 200000) AS i",
            "CREATE TABLE w (id serial PRIMARY KEY, c integer, v integer)",
            "INSERT INTO w (c, v) SELECT i % 5000, 0 FROM generate_series(1, 50000) AS i",
            "ANALYZE",
        ) as db,
    ):
        await call(db, "SELECT * FROM t WHERE b = $1", range(120))
        await call(db, "SELECT id FROM t WHERE b = $1 ORDER BY id", range(120))
        await call(db, "SELECT * FROM w WHERE c = $1", range(120))
        # Twenty rewrites of w: they take several times what the 120 reads of w took.
        await run_sql(db, *["UPDATE w SET v = v + 1", "VACUUM w"] * 20, "ANALYZE w")

        report = await make_report(db, EVERY_CALL)
        queries = {
            f.data["query"]: f.data["queryid"] for f in report.check("slow_queries").findings
        }
        (index,) = findings_on(report, "public.t")
        assert index.data["columns"][0] == "b"
        assert set(index.data["queryids"]) == {
            queries["SELECT * FROM t WHERE b = $1"],
            queries["SELECT id FROM t WHERE b = $1 ORDER BY id"],
        }
        assert index.data["saving_ms"] > 0
        assert index.data["rows_written"] == 0
        # 120 reads of w would save less than one more index would add to its rewrites.
        assert findings_on(report, "public.w") == [], report.as_text()

        await call(db, "SELECT * FROM w WHERE c = $1", range(1500))
        report = await make_report(db, EVERY_CALL)
        (index,) = findings_on(report, "public.w")
        assert index.ddl == "CREATE INDEX CONCURRENTLY ON public.w (c);"
        assert index.data["rows_written"] == 1_000_000
        assert index.data["saving_ms"] > index.data["write_ms"] > 0
        assert "1,000,000 rows the workload wrote" in (index.saves or "")
        assert len(findings_on(report, "public.t")) == 1
        assert_json_ready(report)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_an_index_weighs_the_heap_only_updates_it_would_end() -> None:
    """Updates that set only columns no index reads are heap-only (HOT) and write no
    index entry: an index on another column costs them nothing, and reads that save
    little get it; an index on the column they set would make each of them write every
    index, and is suggested only once the reads save more than that costs, with the
    updates it would turn from HOT said."""
    async with (
        asyncio.timeout(120),
        advised_database(
            # Half-full pages: room for each row's new version beside it.
            "CREATE TABLE h (id integer PRIMARY KEY, a integer NOT NULL, b integer NOT NULL,"
            " pad text NOT NULL) WITH (fillfactor = 50)",
            "INSERT INTO h SELECT i, i % 1000, i % 1000, repeat('x', 40)"
            " FROM generate_series(1, 10000) AS i",
            "ANALYZE",
        ) as db,
    ):
        # Each row four times over.
        await call(db, "UPDATE h SET a = a + 1 WHERE id = $1", [*range(1, 10_001)] * 4)
        await call(db, "SELECT id FROM h WHERE a = $1", range(120))
        await call(db, "SELECT id FROM h WHERE b = $1", range(120))
        async with session(db) as conn:
            hot, updated = await conn.fetchrow(
                "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'h'"
            )
            update_ms = await conn.fetchval(
                "SELECT total_exec_time FROM pg_stat_statements WHERE query LIKE 'UPDATE h %'"
            )
        assert updated == 40_000
        assert hot > 36_000, hot

        report = await make_report(db, EVERY_CALL)
        (index,) = findings_on(report, "public.h")
        assert index.data["columns"] == ["b"], report.as_text()
        assert index.data["rows_written"] == 40_000
        assert index.data["hot_updates_lost"] == 0
        assert index.data["write_ms"] < update_ms / 20, (index.data, update_ms)
        assert "HOT" not in (index.saves or "")

        await call(db, "SELECT id FROM h WHERE a = $1", range(120, 1620))
        report = await make_report(db, EVERY_CALL)
        by_column = {f.data["columns"][0]: f for f in findings_on(report, "public.h")}
        assert "a" in by_column, report.as_text()
        a = by_column["a"]
        assert a.data["hot_updates_lost"] == hot
        assert a.data["write_ms"] > update_ms / 5, (a.data, update_ms)
        assert a.data["saving_ms"] > a.data["write_ms"]
        assert f"{hot:,} of them heap-only (HOT) updates" in (a.saves or ""), a.saves


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_an_index_whose_keys_arrive_in_order_costs_inserts_less() -> None:
    """Of two indexes the reads want as much, the one on a column whose values follow
    the rows' order (``pg_stats.correlation``) is charged a fraction of what the one on
    a column of random values is: B-tree inserts its keys where the last one went."""
    async with (
        asyncio.timeout(120),
        advised_database(
            "CREATE TABLE g (id serial PRIMARY KEY, seq integer NOT NULL,"
            " r integer NOT NULL, pad text NOT NULL)",
            "INSERT INTO g (seq, r, pad) SELECT i, (i::bigint * 7919) % 20000, 'x'"
            " FROM generate_series(1, 20000) AS i",
            "ANALYZE",
        ) as db,
    ):
        batch = (
            "INSERT INTO g (seq, r, pad) SELECT $1 * 1000 + i + 20000,"
            " (random() * 1e9)::integer, 'x' FROM generate_series(1, 1000) AS i"
        )
        await call(db, batch, range(20))
        await call(db, "SELECT id FROM g WHERE seq = $1", range(120))
        await call(db, "SELECT id FROM g WHERE r = $1", range(120))

        report = await make_report(db, EVERY_CALL)
        by_column = {f.data["columns"][0]: f for f in findings_on(report, "public.g")}
        assert set(by_column) == {"seq", "r"}, report.as_text()
        in_order, random = by_column["seq"].data, by_column["r"].data
        assert in_order["rows_written"] == random["rows_written"] == 20_000
        assert 0 < in_order["write_ms"] * 2 < random["write_ms"], (in_order, random)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_a_partial_index_for_statements_that_skip_null_rows() -> None:
    """Statements that read only the rows whose ``deleted_at IS NULL`` get a partial
    index under that predicate; applied as given, the planner uses it."""
    query = "SELECT id FROM p WHERE owner = $1 AND deleted_at IS NULL"
    async with (
        asyncio.timeout(90),
        advised_database(
            "CREATE TABLE p (id serial PRIMARY KEY, owner integer NOT NULL, deleted_at integer)",
            "INSERT INTO p (owner, deleted_at) SELECT i % 1000,"
            " CASE WHEN i % 20 = 0 THEN NULL ELSE i END FROM generate_series(1, 200000) AS i",
            "ANALYZE",
        ) as db,
    ):
        await call(db, query, range(120))
        async with optimizer(db, EVERY_CALL) as opt:
            report = await opt.report()
            (index,) = findings_on(report, "public.p")
            assert index.ddl == (
                "CREATE INDEX CONCURRENTLY ON public.p (owner) WHERE deleted_at IS NULL;"
            ), report.as_text()
            assert index.data["predicate"] == "deleted_at IS NULL"
            assert index.subject == "public.p (owner) WHERE deleted_at IS NULL"
            await opt.apply(index)
        async with session(db) as conn:
            (name,) = await index_names(conn, "p") - {"p_pkey"}
            await conn.execute("ANALYZE p")
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {query.replace('$1', '7')}"))
            assert name in plan, plan


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_an_expression_index_for_a_case_insensitive_lookup() -> None:
    """Statements that compare ``lower(email)`` get an index on that expression (one on
    the column would not serve them); applied as given, the planner uses it, and the
    next report, with it in place, suggests nothing more."""
    query = "SELECT id FROM people WHERE lower(email) = $1"
    async with (
        asyncio.timeout(90),
        advised_database(
            "CREATE TABLE people (id serial PRIMARY KEY, email text NOT NULL)",
            "INSERT INTO people (email) SELECT 'Person' || i || '@Example.com'"
            " FROM generate_series(1, 100000) AS i",
            "ANALYZE",
        ) as db,
    ):
        async with session(db) as conn:
            lookup = await conn.prepare(query)
            for number in range(120):
                assert len(await lookup.fetch(f"person{number + 1}@example.com")) == 1
        async with optimizer(db, EVERY_CALL) as opt:
            report = await opt.report()
            (index,) = findings_on(report, "public.people")
            assert index.ddl == "CREATE INDEX CONCURRENTLY ON public.people ((lower(email)));"
            await opt.apply(index)
            again = await opt.report()
        assert findings_on(again, "public.people") == [], again.as_text()
        async with session(db) as conn:
            (name,) = await index_names(conn, "people") - {"people_pkey"}
            await conn.execute("ANALYZE people")
            explained = await conn.fetch("EXPLAIN " + query.replace("$1", "'x'"))
            plan = "\n".join(row[0] for row in explained)
            assert name in plan, plan


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_a_join_gets_the_index_on_the_column_it_matches_on() -> None:
    """A slow join that hashes a whole table to match a few rows: the columns the join
    matches on are candidates too, and the joined table's index is suggested with the
    filter's, each chosen with the other in place."""
    query = "SELECT l.id FROM heads h JOIN lines l ON l.head_id = h.id WHERE h.ref = $1"
    async with (
        asyncio.timeout(90),
        advised_database(
            "CREATE TABLE heads (id integer PRIMARY KEY, ref integer NOT NULL)",
            "INSERT INTO heads SELECT i, i FROM generate_series(1, 50000) AS i",
            "CREATE TABLE lines (id serial PRIMARY KEY, head_id integer NOT NULL)",
            "INSERT INTO lines (head_id) SELECT 1 + i % 50000 FROM generate_series(1, 200000) AS i",
            "ANALYZE",
        ) as db,
    ):
        await call(db, query, range(1, 121))
        report = await make_report(db, EVERY_CALL)
    ddl = {f.ddl for f in report.check("suggested_indexes").findings}
    assert "CREATE INDEX CONCURRENTLY ON public.lines (head_id);" in ddl, report.as_text()
    assert "CREATE INDEX CONCURRENTLY ON public.heads (ref);" in ddl, report.as_text()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_the_advice_says_which_tables_it_planned_without_statistics() -> None:
    """A table never analyzed is planned on default estimates, which may hide the index
    it needs: the check says which tables those are."""
    async with (
        asyncio.timeout(60),
        advised_database(
            "CREATE TABLE u (id serial PRIMARY KEY, k integer) WITH (autovacuum_enabled = false)",
            "INSERT INTO u (k) SELECT i % 1000 FROM generate_series(1, 50000) AS i",
            "CREATE TABLE v (id serial PRIMARY KEY, k integer)",
            "INSERT INTO v (k) SELECT i FROM generate_series(1, 1000) AS i",
            "ANALYZE v",
        ) as db,
    ):
        await call(db, "SELECT * FROM u WHERE k = $1", range(110))
        await call(db, "SELECT * FROM v WHERE k = $1", range(110))
        suggested = (await make_report(db, EVERY_CALL)).check("suggested_indexes")
        assert suggested.ran
        assert suggested.note is not None
        assert suggested.note.startswith("no planner statistics for public.u (never analyzed)")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
@pytest.mark.own_cluster
async def test_a_slow_statement_that_cannot_be_planned_any_more_is_left_out() -> None:
    """pg_stat_statements remembers statements on a table dropped since: the advisor
    cannot prepare those, skips them, and still advises on the rest."""
    async with (
        asyncio.timeout(60),
        advised_database(
            "CREATE TABLE gone (k integer)",
            "INSERT INTO gone SELECT i FROM generate_series(1, 1000) AS i",
            "CREATE TABLE kept (id serial PRIMARY KEY, k integer)",
            "INSERT INTO kept (k) SELECT i % 1000 FROM generate_series(1, 100000) AS i",
            "ANALYZE",
        ) as db,
    ):
        await call(db, "SELECT * FROM gone WHERE k = $1", range(110))
        await call(db, "SELECT * FROM kept WHERE k = $1", range(110))
        await run_sql(db, "DROP TABLE gone")
        report = await make_report(db, EVERY_CALL)
    slow = [f.data["query"] for f in report.check("slow_queries").findings]
    assert "SELECT * FROM gone WHERE k = $1" in slow
    suggested = report.check("suggested_indexes")
    assert suggested.ran, suggested.note
    assert [f.ddl for f in suggested.findings] == ["CREATE INDEX CONCURRENTLY ON public.kept (k);"]


async def test_sqlite_report(sqlite_url: str) -> None:
    """On SQLite the report has its one check, which ran, and a note saying what
    SQLite cannot tell (usage statistics) so nothing looks falsely healthy."""
    async with ConnectionPool(sqlite_url) as pool:
        await upgrade(pool)
        report = await QueryOptimizer(pool).report()
    assert report.dialect == "sqlite"
    assert report.stats_reset_at is None
    assert len(report.checks) == 1
    (check,) = report.checks
    assert check.ran
    assert check.note is not None
    assert "PostgreSQL only" in check.note
    assert "slow queries" in check.note
    assert check.title in report.as_text()
    assert_json_ready(report)
