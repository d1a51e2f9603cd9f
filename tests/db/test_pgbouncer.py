"""Behind PgBouncer in transaction mode (``DATABASE_URL=...?pgbouncer=true``).

A private PgBouncer (Debian's 1.18) with three server connections per database sits in
front of the test server, so that every client connection's statements really do land
on whichever server connection is free. What must hold there:

* no statement depends on a name prepared on another server connection (the control
  test shows that the same load without ``pgbouncer=true`` fails);
* ``statement_timeout``, which PgBouncer refuses as a startup parameter, still cancels
  a statement on the server;
* maintenance takes its lock per transaction and leaves none behind; ANALYZE honours
  ``lock_timeout``, VACUUM is cancelled at ``statement_timeout``;
* the API, cache and optimizer suites pass through it (run as a second pytest).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from service.db.optimization import ADVISORY_LOCK_KEY, QueryOptimizer
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.errors import DatabaseUnavailable, MaintenanceRunning
from tests.db.test_maintenance import locked, outcomes
from tests.helpers import Database, side_dsn, unique_id
from tests.support.private_pgbouncer import PrivatePgBouncer, private_pgbouncer

pytestmark = [pytest.mark.slow, pytest.mark.tools]

ROOT = Path(__file__).resolve().parents[2]
SERVER_CONNECTIONS = 3
"""PgBouncer's server connections per database: a maintenance run holds two at a time
(its lock's transaction and its statement), and a second caller needs a third to be
told that maintenance is running."""
CLIENTS = 12
"""Concurrent callers, on as many pooled client connections."""


@pytest.fixture
async def bouncer(pg_admin_url: str) -> AsyncIterator[PrivatePgBouncer]:
    async with private_pgbouncer(pg_admin_url, pool_size=SERVER_CONNECTIONS) as running:
        yield running


def through(bouncer: PrivatePgBouncer, db: Database, *, pooler: bool = True) -> str:
    """``db``'s service URL through ``bouncer``, with or without ``pgbouncer=true``."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{bouncer.port}/{db.name}"
    return f"{url}?pgbouncer=true" if pooler else url


async def churn(store: ResultStore, ids: list[str], rounds: int) -> list[BaseException]:
    """Each of CLIENTS callers writes and reads its own id ``rounds`` times; the errors."""
    errors: list[BaseException] = []

    async def client(analysis_id: str) -> None:
        for n in range(rounds):
            try:
                written = await store.put(analysis_id, {"n": n})
                read = await store.get(analysis_id)
                assert read is not None
                assert read.meta.version >= written.meta.version
                assert read.document() == {"n": n}
            except AssertionError:
                raise
            except Exception as exc:  # what the driver or PgBouncer said
                errors.append(exc)

    await asyncio.gather(*(client(analysis_id) for analysis_id in ids))
    return errors


async def test_reads_and_writes_share_three_server_connections_without_an_error(
    bouncer: PrivatePgBouncer, migrated_db: Database
) -> None:
    ids = [unique_id("bouncer") for _ in range(CLIENTS)]
    async with ConnectionPool(through(bouncer, migrated_db), pool_size=CLIENTS) as pool:
        errors = await churn(ResultStore(pool), ids, rounds=40)
        assert pool.behind_pgbouncer
    assert errors == []
    versions = await migrated_db.fetchval(
        "SELECT array_agg(DISTINCT version) FROM results WHERE analysis_id = ANY($1)", ids
    )
    assert versions == [40]
    servers = await migrated_db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    assert servers <= SERVER_CONNECTIONS  # however many client connections the pool had


async def test_control_without_the_setting_prepared_statements_go_astray(
    bouncer: PrivatePgBouncer, migrated_db: Database
) -> None:
    """The same load without ``pgbouncer=true`` fails: the test above can fail."""
    ids = [unique_id("astray") for _ in range(CLIENTS)]
    url = through(bouncer, migrated_db, pooler=False)
    async with ConnectionPool(url, pool_size=CLIENTS, statement_timeout=0) as pool:
        # Every client connection open before the churn, so the callers' statements
        # interleave from the first round (staggered connects let a few callers run
        # alone on one server connection, where nothing goes astray).
        all_open = asyncio.Barrier(CLIENTS)

        async def hold_one() -> None:
            async with pool.connection():
                await all_open.wait()

        await asyncio.gather(*(hold_one() for _ in range(CLIENTS)))
        errors = await churn(ResultStore(pool), ids, rounds=10)
    assert errors, "every statement found its prepared statement: the control proves nothing"
    assert any("prepared statement" in str(error.__cause__ or error) for error in errors)


async def test_statement_timeout_cancels_the_statement_on_the_server(
    bouncer: PrivatePgBouncer, migrated_db: Database
) -> None:
    """PgBouncer refuses ``statement_timeout`` as a startup parameter; asyncpg enforces it
    and its cancel request reaches the server connection running the statement."""
    url = through(bouncer, migrated_db)
    async with ConnectionPool(url, statement_timeout=0.3) as pool:
        started = time.perf_counter()
        with pytest.raises(DatabaseUnavailable, match="statement_timeout"):
            async with pool.connection() as conn:
                await conn.execute(text("SELECT pg_sleep(5)"))
        assert time.perf_counter() - started < 2.0
        deadline = time.monotonic() + 2.0
        while await migrated_db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'"
            " AND state = 'active'"
        ):
            assert time.monotonic() < deadline, "the statement still runs on the server"
            await asyncio.sleep(0.05)
        await pool.ping()


async def advisory_locks(db: Database) -> int:
    """Maintenance advisory locks held in ``db`` right now, by any session."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND d.datname = $1"
            " AND (l.classid::bigint << 32 | l.objid::bigint) = $2",
            db.name,
            ADVISORY_LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF,
        )
    )


async def test_maintenance_runs_once_at_a_time_and_leaves_no_lock_behind(
    bouncer: PrivatePgBouncer, migrated_db: Database
) -> None:
    """A run held up (its VACUUM waits for a table someone locked) keeps the lock: a
    second caller is refused at once. When the first ends, no lock is left anywhere."""
    await migrated_db.execute("CREATE TABLE t (id int)")
    async with ConnectionPool(through(bouncer, migrated_db), pool_size=4) as pool:
        optimizer = QueryOptimizer(pool)
        async with locked(migrated_db, "t") as holder:
            first = asyncio.create_task(optimizer.vacuum(["t"]))
            while not await advisory_locks(migrated_db):
                await asyncio.sleep(0.02)
            with pytest.raises(MaintenanceRunning):
                await optimizer.vacuum(["results"])
            await holder.execute("COMMIT")
            run = await asyncio.wait_for(first, 10)
        assert outcomes(run) == [("public.t", "done")]
        assert await advisory_locks(migrated_db) == 0
        again = await optimizer.analyze(["results"])  # the lock went with its transaction
        assert outcomes(again) == [("public.results", "done")]
        assert await advisory_locks(migrated_db) == 0


async def test_maintenance_while_another_replica_holds_the_lock_is_refused(
    bouncer: PrivatePgBouncer, migrated_db: Database
) -> None:
    holder = await asyncpg.connect(side_dsn(migrated_db.url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        async with ConnectionPool(through(bouncer, migrated_db)) as pool:
            with pytest.raises(MaintenanceRunning):
                await QueryOptimizer(pool).vacuum(["results"])
    finally:
        await holder.close()


async def test_a_locked_table_analyze_is_skipped_vacuum_is_cancelled(
    bouncer: PrivatePgBouncer, migrated_db: Database
) -> None:
    """ANALYZE carries ``SET LOCAL lock_timeout`` in its own query string; VACUUM cannot
    run in a transaction, so the lock it waits for counts against ``statement_timeout``."""
    await migrated_db.execute("CREATE TABLE t (id int); CREATE TABLE u (id int)")
    async with ConnectionPool(through(bouncer, migrated_db)) as pool:
        optimizer = QueryOptimizer(pool, lock_timeout=0.2, statement_timeout=0.5)
        async with locked(migrated_db, "t"):
            analyzed = await asyncio.wait_for(optimizer.analyze(["t", "u"]), 10)
            vacuumed = await asyncio.wait_for(optimizer.vacuum(["t", "u"]), 10)
        after = await optimizer.analyze(["t"])  # nothing was left waiting or locked
    assert outcomes(analyzed) == [("public.t", "skipped"), ("public.u", "done")]
    assert analyzed.tables[0].detail == "its lock was not granted within 0.2 s"
    assert outcomes(vacuumed) == [("public.t", "timed out"), ("public.u", "done")]
    assert 0.4 < vacuumed.tables[0].seconds < 2.0
    assert outcomes(after) == [("public.t", "done")]
    assert await advisory_locks(migrated_db) == 0


NO_DATABASE = [
    "tests/cache/test_batched_writes.py",
    "tests/cache/test_cache_breaker.py",
    "tests/cache/test_cache_faults.py",
    "tests/cache/test_cache_manager.py",
    "tests/cache/test_local_cache.py",
    "tests/cache/test_cluster.py",
]
"""Cache modules left out of the run through PgBouncer: the first five reach no
database; the cluster's tests use one only to fill a cache, and they run the cache
suite again on a cluster of their own, which made the run here twice as long."""

LONG_ONLY = [
    "tests/cache/test_cache_lifetime.py",
    "tests/cache/test_result_cache_faults.py",
]
"""Cache modules run through PgBouncer only with ``--long``: they stop Redis and wait
out TTLs, a third of the cache suite's time, while their database calls are the
result store's reads and writes that the other modules make through PgBouncer too."""


@pytest.mark.deadline(900)  # three suites again; the run has its own 780 s limit
async def test_the_api_cache_and_optimizer_suites_pass_through_pgbouncer(
    pg_admin_url: str, request: pytest.FixtureRequest
) -> None:
    """tests/api, tests/cache and tests/db again, every service URL on the test server
    going through PgBouncer (``TEST_PGBOUNCER_PORT``, see ``tests.helpers.service_url``),
    but for the tests marked ``one_session``, those marked ``own_cluster`` (they reach
    only a cluster they start, never this PgBouncer), the cache modules that reach no
    database (NO_DATABASE), the tests of the SQLite store (named for it; they reach no
    server) and, without ``--long``, LONG_ONLY."""
    left_out = NO_DATABASE if request.config.getoption("--long") else NO_DATABASE + LONG_ONLY
    if os.environ.get("TEST_PGBOUNCER_PORT"):
        pytest.fail("already running through PgBouncer: this module must be left out")
    async with private_pgbouncer(pg_admin_url, pool_size=4) as running:
        env = {**os.environ, "TEST_PGBOUNCER_PORT": str(running.port)}
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
        argv += ["-m", "not one_session and not own_cluster", "-k", "not sqlite"]
        argv += ["--ignore", str(Path(__file__))]
        argv += [f"--ignore={module}" for module in left_out]
        argv += ["tests/api", "tests/cache", "tests/db"]
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 780)
        transactions = await served_transactions(running)
    report = out.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
    assert " passed" in report.splitlines()[-1]
    assert transactions > 5_000, "the suites did not go through PgBouncer"


async def served_transactions(bouncer: PrivatePgBouncer) -> int:
    """Transactions PgBouncer has passed to PostgreSQL so far (``SHOW STATS``; its
    console speaks only the simple query protocol, so psql asks)."""
    process = await asyncio.create_subprocess_exec(
        "psql",
        "-h",
        "127.0.0.1",
        "-p",
        str(bouncer.port),
        "-U",
        "postgres",
        "-At",
        "-c",
        "SHOW STATS",
        "pgbouncer",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 10)
    # database|total_xact_count|total_query_count|...
    return sum(int(line.split("|")[1]) for line in out.decode().splitlines() if "|" in line)
