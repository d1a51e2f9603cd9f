"""QueryOptimizer: diagnostics a person can act on, and maintenance safe on a busy database.

The specification's optimizer ran ``VACUUM ANALYZE`` inside a transaction (PostgreSQL
refuses: VACUUM cannot run in a transaction block), on the whole database at once, and
dropped nothing but judged indexes by scans alone. Here:

* **Maintenance** (:meth:`~QueryOptimizer.analyze`, :meth:`~QueryOptimizer.vacuum`) runs
  on an autocommit connection, one table at a time, each statement under
  ``lock_timeout`` (a table someone holds is skipped and said so, instead of queueing
  every writer behind us) and ``statement_timeout``; under a PostgreSQL advisory lock,
  so one replica maintains at a time and a second caller gets
  :class:`MaintenanceRunning` at once. Table names are looked up in the catalog and
  quoted by the server; a name that is not one of the database's tables is refused
  with :class:`UnknownTable` before anything runs.
* **The report** (:meth:`~QueryOptimizer.report`) runs PgHero's checks with its
  thresholds (:mod:`service.db.diagnostics`) and Dexter-style index suggestions when
  hypopg is installed (:mod:`service.db.advisor`). Every finding carries its DDL;
  nothing is created or dropped unless :meth:`~QueryOptimizer.apply` is called.
* **SQLite** (the embedded default) gets ANALYZE, VACUUM and ``PRAGMA optimize``, and a
  report that says what it covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service import defaults
from service.db import advisor, diagnostics, history
from service.db.diagnostics import Thresholds
from service.db.pool import ConnectionPool, sqlstate
from service.db.report import Check, Finding, Report, pretty_bytes
from service.errors import (
    InvalidArgument,
    InvalidOperation,
    MaintenanceRunning,
    OptimizerError,
    ServiceError,
    UnknownTable,
)

logger = logging.getLogger(__name__)

Operation = Literal["analyze", "vacuum"]
OPERATIONS: tuple[Operation, ...] = ("analyze", "vacuum")
__all__ = [
    "InvalidOperation",
    "MaintenanceRun",
    "MaintenanceRunning",
    "OptimizerError",
    "QueryOptimizer",
    "TableRun",
    "UnknownTable",
]
ADVISORY_LOCK_KEY = 7_355_608_211_927_111_001
"""One bigint for every replica of this service: who holds it is maintaining."""
_LOCK_NOT_AVAILABLE = "55P03"
_QUERY_CANCELED = "57014"
_GONE = ("42P01", "3F000")  # undefined_table, invalid_schema_name: dropped mid-run
_APPLICABLE = ("DROP INDEX CONCURRENTLY ", "CREATE INDEX CONCURRENTLY ", "VACUUM ", "ANALYZE ")


@dataclass(frozen=True, slots=True)
class TableRun:
    """What happened to one table."""

    table: str
    statement: str
    outcome: Literal["done", "skipped", "timed out"]
    seconds: float
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class MaintenanceRun:
    """What :meth:`QueryOptimizer.maintain` ran, with timings."""

    operation: Operation
    started_at: datetime
    seconds: float
    tables: tuple[TableRun, ...]

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["started_at"] = self.started_at.isoformat()
        return body


class QueryOptimizer:
    """Diagnostics and maintenance of the database behind ``pool``.

    ::

        async with ConnectionPool(url) as pool:
            optimizer = QueryOptimizer(pool)
            report = await optimizer.report()
            for check, finding in report.findings:
                print(check.title, finding.subject, finding.ddl)
            await optimizer.vacuum(["results"])

    ``lock_timeout`` and ``statement_timeout`` (seconds) bound each maintenance statement.
    """

    _local_locks: ClassVar[dict[str, asyncio.Lock]] = {}

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        lock_timeout: float = defaults.DB_LOCK_TIMEOUT,
        statement_timeout: float = defaults.DB_MAINTENANCE_TIMEOUT,
        thresholds: Thresholds | None = None,
    ) -> None:
        if lock_timeout <= 0 or statement_timeout <= 0:
            raise InvalidArgument("lock_timeout and statement_timeout must be positive")
        self.pool = pool
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.thresholds = thresholds or Thresholds()
        self.statements: dict[tuple[str, str], int] = {}
        """Maintenance statements run by this optimizer, by (operation, outcome)."""

    async def analyze(self, tables: Iterable[str] | None = None) -> MaintenanceRun:
        """``ANALYZE`` each table (default: all of the database's own), one at a time."""
        return await self.maintain("analyze", tables)

    async def vacuum(
        self, tables: Iterable[str] | None = None, *, analyze: bool = True
    ) -> MaintenanceRun:
        """``VACUUM`` (with ``ANALYZE`` unless told not to) each table, one at a time.

        Plain VACUUM, never FULL: it takes no lock that blocks reads or writes.
        """
        return await self.maintain("vacuum", tables, analyze=analyze)

    async def optimize_queries(self) -> MaintenanceRun:
        """Refresh statistics and reclaim dead rows everywhere, the safe way
        (``VACUUM (ANALYZE)`` table by table): the one call for callers who want
        "make the database fast again" without choosing an operation."""
        return await self.vacuum(analyze=True)

    async def maintain(
        self, operation: str, tables: Iterable[str] | None = None, *, analyze: bool = True
    ) -> MaintenanceRun:
        """Run ``operation`` (``analyze`` or ``vacuum``) on ``tables`` (default: all).

        Raises :class:`InvalidOperation`, :class:`UnknownTable` (before anything runs)
        or :class:`MaintenanceRunning`. A table whose lock is not granted within
        ``lock_timeout`` is skipped, and the run goes on with the next one.
        """
        run = await self._maintain(operation, tables, analyze, None)
        assert run is not None  # only a run with unless_within is ever left out
        return run

    async def maintain_unless_done_within(
        self, operation: str, seconds: float
    ) -> MaintenanceRun | None:
        """:meth:`maintain` of every table, unless every table had ``operation`` (by
        anyone: another replica, an operator) in the last ``seconds``, as PostgreSQL's
        own statistics record it; then nothing runs and None is returned.

        It is decided while holding the maintenance lock, so replicas that maintain on
        the same schedule do it once per interval between them, not once each.
        """
        return await self._maintain(operation, None, True, seconds)

    async def _maintain(
        self,
        operation: str,
        tables: Iterable[str] | None,
        analyze: bool,
        unless_within: float | None,
    ) -> MaintenanceRun | None:
        if operation not in OPERATIONS:
            raise InvalidOperation(f"operation must be one of {', '.join(OPERATIONS)}")
        wanted = None if tables is None else list(tables)
        if wanted is not None and not all(isinstance(name, str) and name for name in wanted):
            raise UnknownTable("table names must be non-empty strings")
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        async with self._exclusive() as conn:
            qualified = await self._resolve(conn, wanted)
            if unless_within is not None and await self._done_within(
                conn, operation, qualified, unless_within
            ):
                return None
            runs = [
                await self._run_one(conn, table, statement)
                for table, statement in _statements(
                    operation, analyze, self.pool.dialect, qualified
                )
            ]
        run = MaintenanceRun(
            operation,
            started_at,
            time.perf_counter() - started,
            tuple(runs),
        )
        for table_run in runs:
            key = (operation, table_run.outcome)
            self.statements[key] = self.statements.get(key, 0) + 1
        logger.info(
            "maintenance operation=%s tables=%d seconds=%.3f skipped=%d",
            operation,
            len(runs),
            run.seconds,
            sum(r.outcome != "done" for r in runs),
        )
        return run

    async def _done_within(
        self, conn: AsyncConnection, operation: str, tables: list[str], seconds: float
    ) -> bool:
        """Whether every one of ``tables`` had ``operation`` in the last ``seconds``
        (PostgreSQL only: SQLite keeps no such record, and has no replicas)."""
        if self.pool.dialect != "postgresql" or not tables:
            return False
        statement = _DONE_WITHIN["vacuum" if operation == "vacuum" else "analyze"]
        return bool(await conn.scalar(statement, {"s": seconds, "t": tables}))

    async def tables(self) -> list[str]:
        """The database's own tables, schema-qualified and quoted as SQL needs them."""
        async with self.pool.connection() as conn:
            return await self._resolve(conn, None)

    async def snapshot(self, keep: int = history.KEEP) -> history.Snapshot:
        """Record the statements' statistics and the tables' sizes now, for the report's
        ``changes`` check (see :mod:`service.db.history`); keep the newest ``keep``."""
        if self.pool.dialect != "postgresql":
            raise OptimizerError("snapshots read PostgreSQL's statistics: not on SQLite")
        async with self.pool.connection() as conn:
            return await history.take(conn, keep)

    async def apply(self, finding: Finding) -> float:
        """Run the DDL a report recommended; return the seconds it took.

        The only way anything a report suggests gets executed. ``CONCURRENTLY`` index
        builds and drops cannot run in a transaction, so this uses an autocommit
        connection with ``lock_timeout`` set.
        """
        ddl = finding.ddl
        if not ddl or not ddl.startswith(_APPLICABLE):
            raise OptimizerError(f"nothing to apply for {finding.subject}")
        async with self._exclusive(hold=" CONCURRENTLY " not in ddl) as conn:
            started = time.perf_counter()
            await self._execute(conn, ddl.rstrip(";"))
            return time.perf_counter() - started

    # Diagnostics.

    async def report(self) -> Report:
        """Every check, run now; see :mod:`service.db.diagnostics` for the rules."""
        async with self.pool.connection() as conn:
            if self.pool.dialect == "sqlite":
                return await _sqlite_report(conn, self.pool.safe_url)
            info = (
                await diagnostics.rows(
                    conn,
                    """
                    SELECT current_database() AS name, current_setting('server_version') AS version,
                           pg_stat_get_db_stat_reset_time(
                             (SELECT oid FROM pg_database WHERE datname = current_database())
                           ) AS reset
                    """,
                )
            )[0]
            checks = [await check(conn, self.thresholds) for check in diagnostics.CHECKS]
            suggested = await advisor.suggested_indexes(conn, self.thresholds)
            checks = [
                advisor.without_covered_foreign_keys(check, suggested)
                if check.name == "unindexed_foreign_keys"
                else check
                for check in checks
            ]
            checks.append(suggested)
            checks.append(await history.changes(conn, self.thresholds))
            return Report(
                database=info["name"],
                dialect="postgresql",
                server_version=info["version"],
                generated_at=datetime.now(UTC),
                stats_reset_at=info["reset"],
                checks=tuple(checks),
                overview=await diagnostics.overview(conn),
            )

    # Internals.

    @contextlib.asynccontextmanager
    async def _exclusive(self, hold: bool = True) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection, held while no one else maintains this database.

        Directly on PostgreSQL, the advisory lock and the timeouts belong to that
        connection's session. Behind PgBouncer in transaction mode a session outlives
        no statement: the lock is transaction-scoped instead, taken in a transaction
        that a second connection keeps open until the run ends (idle, so it holds back
        no VACUUM), and each statement carries its own timeouts (:meth:`_execute`).
        ``hold=False`` there only checks the lock is free: a ``CONCURRENTLY`` index
        build or drop waits for every open transaction of the database, the lock's own
        included, so holding it would wait forever.
        """
        if self.pool.dialect == "sqlite":
            lock = self._local_locks.setdefault(self.pool.safe_url, asyncio.Lock())
            if lock.locked():
                raise MaintenanceRunning("maintenance is already running on this database")
            async with lock, self.pool.connection() as conn:
                yield conn
            return
        if self.pool.behind_pgbouncer:
            async with self.pool.transaction() as holder:
                await _lock_or_refuse(holder, "pg_try_advisory_xact_lock")
                if hold:
                    async with self.pool.connection() as conn:
                        yield conn
                    return
            async with self.pool.connection() as conn:
                yield conn
            return
        async with self.pool.connection() as conn:
            await _lock_or_refuse(conn, "pg_try_advisory_lock")
            try:
                await conn.exec_driver_sql(f"SET lock_timeout = {_ms(self.lock_timeout)}")
                await conn.exec_driver_sql(f"SET statement_timeout = {_ms(self.statement_timeout)}")
                yield conn
            finally:
                await _unlock_or_discard(conn)

    async def _execute(self, conn: AsyncConnection, statement: str) -> None:
        """Run one maintenance statement under ``lock_timeout`` and ``statement_timeout``.

        Behind PgBouncer they cannot be session settings. ANALYZE goes with its own
        ``SET LOCAL`` in one query string (an implicit transaction, one server
        connection). VACUUM and the concurrent index builds cannot run in a transaction
        at all: asyncpg cancels them after ``statement_timeout``, and a lock they wait
        for counts against that.
        """
        if not self.pool.behind_pgbouncer:
            await conn.exec_driver_sql(statement)
            return
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        if statement.startswith("ANALYZE "):
            await driver.execute(
                f"SET LOCAL lock_timeout = {_ms(self.lock_timeout)};"
                f" SET LOCAL statement_timeout = {_ms(self.statement_timeout)}; {statement}",
                timeout=self.statement_timeout + _CANCEL_GRACE,
            )
        else:
            await driver.execute(statement, timeout=self.statement_timeout)

    async def _resolve(self, conn: AsyncConnection, wanted: list[str] | None) -> list[str]:
        if self.pool.dialect == "sqlite":
            found = await diagnostics.rows(
                conn,
                "SELECT name, '\"' || replace(name, '\"', '\"\"') || '\"' AS quoted"
                " FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " ORDER BY name",
            )
            known = {row["name"]: row["quoted"] for row in found}
        else:
            found = await diagnostics.rows(
                conn,
                """
                SELECT schemaname || '.' || tablename AS name, tablename AS short,
                       array_position(current_schemas(false), schemaname) AS position,
                       format('%I.%I', schemaname, tablename) AS quoted
                FROM pg_tables
                WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
                  AND schemaname NOT LIKE 'pg_toast%'
                  AND schemaname NOT LIKE 'pg_temp%'
                ORDER BY schemaname, tablename
                """,
            )
            known = {row["name"]: row["quoted"] for row in found}
            # A short name is the table the search path finds first, as in SQL.
            visible = [row for row in found if row["position"] is not None]
            for row in sorted(visible, key=lambda row: row["position"]):
                known.setdefault(row["short"], row["quoted"])
        for row in found:  # what tables() returns is accepted back as it is
            known.setdefault(row["quoted"], row["quoted"])
        if wanted is None:
            return list(dict.fromkeys(row["quoted"] for row in found))
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise UnknownTable(
                f"not a table of this database: {', '.join(repr(n[:80]) for n in unknown[:5])}"
            )
        return list(dict.fromkeys(known[name] for name in wanted))

    async def _run_one(self, conn: AsyncConnection, table: str, statement: str) -> TableRun:
        started = time.perf_counter()
        try:
            await self._execute(conn, statement)
        except (DBAPIError, asyncpg.PostgresError, TimeoutError) as exc:
            state = _QUERY_CANCELED if isinstance(exc, TimeoutError) else sqlstate(exc)
            if state not in (_LOCK_NOT_AVAILABLE, _QUERY_CANCELED, *_GONE):
                raise
            outcome: Literal["skipped", "timed out"] = (
                "timed out" if state == _QUERY_CANCELED else "skipped"
            )
            if state == _LOCK_NOT_AVAILABLE:
                detail = f"its lock was not granted within {self.lock_timeout:g} s"
            elif state == _QUERY_CANCELED:
                detail = f"it ran past {self.statement_timeout:g} s and was cancelled"
            else:
                detail = "it no longer exists (dropped or renamed during the run)"
            logger.warning("maintenance %s: %s", outcome, statement)
            return TableRun(table, statement, outcome, time.perf_counter() - started, detail)
        return TableRun(table, statement, "done", time.perf_counter() - started)


async def maintain_periodically(optimizer: QueryOptimizer, operation: str, interval: float) -> None:
    """Run ``operation`` on every table each ``interval`` seconds, until cancelled.

    A run that finds another replica maintaining, or the database away, is logged and
    skipped: the next interval tries again. Replicas started together would all try at
    once; the advisory lock lets one through and the rest skip; one that comes later in
    the same interval finds the tables maintained and skips too. Each interval also
    takes a snapshot for the report's history (on PostgreSQL), unless someone took one
    within it.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            # Not when another replica (or anyone) did it this interval.
            await optimizer.maintain_unless_done_within(operation, interval * 0.9)
        except MaintenanceRunning:
            logger.info("periodic maintenance skipped: another caller is maintaining")
        except (ServiceError, DBAPIError) as exc:
            logger.warning("periodic maintenance failed: %s", type(exc).__name__)
        if optimizer.pool.dialect != "postgresql":
            continue
        try:
            async with optimizer.pool.connection() as conn:
                if not await history.taken_within(conn, interval * 0.9):
                    await history.take(conn)
        except (ServiceError, DBAPIError) as exc:
            logger.warning("periodic snapshot failed: %s", type(exc).__name__)


_DONE_WITHIN = {
    "analyze": text(
        "SELECT count(*) FILTER (WHERE last_analyze > now() - make_interval(secs => :s))"
        " = count(*) FROM pg_stat_all_tables WHERE relid = ANY(CAST(:t AS regclass[]))"
    ),
    "vacuum": text(
        "SELECT count(*) FILTER (WHERE last_vacuum > now() - make_interval(secs => :s))"
        " = count(*) FROM pg_stat_all_tables WHERE relid = ANY(CAST(:t AS regclass[]))"
    ),
}
"""Whether every given table had the operation in the last ``:s`` seconds."""


def _statements(
    operation: str, analyze: bool, dialect: str, tables: list[str]
) -> list[tuple[str, str]]:
    """(table, statement) pairs; ``tables`` arrive quoted by the database itself."""
    if dialect == "sqlite":
        # SQLite vacuums the whole file (there is no per-table VACUUM); PRAGMA optimize
        # then refreshes whatever statistics the planner would benefit from.
        if operation == "vacuum":
            work = [("*", "VACUUM")] + ([("*", "ANALYZE")] if analyze else [])
        else:
            work = [(table, f"ANALYZE {table}") for table in tables]
        return [*work, ("*", "PRAGMA optimize")]
    if operation == "analyze":
        return [(table, f"ANALYZE {table}") for table in tables]
    return [
        (table, f"VACUUM (ANALYZE) {table}" if analyze else f"VACUUM {table}") for table in tables
    ]


_CANCEL_GRACE = 5.0
"""Seconds asyncpg waits past a server-side ``statement_timeout`` before cancelling."""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


async def _lock_or_refuse(conn: AsyncConnection, function: str) -> None:
    """Take the maintenance lock with ``function`` (session or transaction scope), or
    raise :class:`MaintenanceRunning` at once."""
    got = await conn.scalar(text(f"SELECT {function}(:key)"), {"key": ADVISORY_LOCK_KEY})
    if not got:
        raise MaintenanceRunning(
            "maintenance is already running on this database (another caller or"
            " replica holds its advisory lock); try again when it ends"
        )


async def _unlock_or_discard(conn: AsyncConnection) -> None:
    """Unlock and restore the session; if that fails, close the connection, which
    releases a session-level advisory lock for certain."""
    try:
        await asyncio.shield(_unlock(conn))
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.invalidate()
        raise


async def _unlock(conn: AsyncConnection) -> None:
    await conn.exec_driver_sql("RESET lock_timeout")
    await conn.exec_driver_sql("RESET statement_timeout")
    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})


async def _sqlite_report(conn: AsyncConnection, url: str) -> Report:
    """SQLite keeps no usage statistics: the report covers what it can know."""
    pages = (await conn.exec_driver_sql("PRAGMA page_count")).scalar_one()
    free = (await conn.exec_driver_sql("PRAGMA freelist_count")).scalar_one()
    size = (await conn.exec_driver_sql("PRAGMA page_size")).scalar_one()
    version = (await conn.exec_driver_sql("SELECT sqlite_version()")).scalar_one()
    analyzed = bool(
        (
            await conn.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
            )
        ).scalar_one()
    )
    findings: list[Finding] = []
    if pages and free / pages > 0.1:
        findings.append(
            Finding(
                subject="database file",
                detail=f"{free} of {pages} pages are free ({free / pages:.0%})",
                recommendation="vacuum it to give the space back to the file system",
                ddl="VACUUM;",
                saves=pretty_bytes(free * size),
            )
        )
    if not analyzed:
        findings.append(
            Finding(
                subject="database file",
                detail="never analyzed: the planner has no statistics",
                recommendation="analyze it (PRAGMA optimize does so when it helps)",
                ddl="ANALYZE;",
                saves="plans chosen without row counts",
                severity="info",
            )
        )
    check = Check(
        "sqlite_maintenance",
        "SQLite free pages and statistics",
        "SQLite documentation: VACUUM, ANALYZE, PRAGMA optimize",
        note="SQLite keeps no usage statistics: index usage, cache hit ratios, vacuum"
        " state, connections and slow queries are reported on PostgreSQL only",
        findings=tuple(findings),
    )
    return Report(
        database=url,
        dialect="sqlite",
        server_version=str(version),
        generated_at=datetime.now(UTC),
        stats_reset_at=None,
        checks=(check,),
        overview={"database_size": pretty_bytes(pages * size), "free_pages": free},
    )
