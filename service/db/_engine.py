"""Building the AsyncEngine: driver settings, SQLite's transaction recipe, liveness checks.

Kept apart from :mod:`service.db.pool` so the pool reads as what callers use, and the
dialect-specific set-up reads as one piece.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, util
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import queue as sqla_queue

OVERFLOW_LINGER = 60.0
"""Seconds of lighter load after which connections opened beyond ``pool_size`` close."""

KEEP_HEAP_STATEMENT = (
    "/* service: raise this backend's malloc thresholds */"
    " SELECT length(repeat(' ', 2 * 1024 * 1024))"
)
"""Run once on each new PostgreSQL connection: see :func:`keep_backend_heap`. The comment
tells an operator who finds it in ``pg_stat_activity`` what it is for."""

# SQLAlchemy 2.1 renamed await_only to await_; accept either. Inside the greenlet that
# runs pooled operations, it waits for a coroutine of the driver itself.
await_ = getattr(util, "await_", None) or util.await_only


def create_engine(
    url: URL,
    *,
    connect_timeout: float,
    statement_timeout: float,
    application_name: str,
    transaction_pooler: bool = False,
    overflow_linger: float = OVERFLOW_LINGER,
    **pool: Any,
) -> AsyncEngine:
    """The AsyncEngine for ``url``, autocommit by default.

    ``transaction_pooler``: the URL leads to PgBouncer in transaction mode, where each
    transaction (each statement, in autocommit) may run on another server connection.
    Then no statement is prepared under a name (asyncpg's and SQLAlchemy's statement
    caches are off: a name prepared on one server connection is unknown on the next;
    asyncpg's unnamed statement stays on one connection, as its Parse and Bind travel
    before one Sync), and ``statement_timeout``, which PgBouncer refuses as a startup
    parameter, is enforced by asyncpg: a statement that runs longer is cancelled with a
    cancel request, which PgBouncer forwards to the server connection running it.
    On PostgreSQL the pool is a :class:`LingeringQueuePool` (``overflow_linger``).
    """
    connect_args: dict[str, Any]
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # sqlite3's timeout is how long a writer waits for the file lock (busy_timeout).
        connect_args = {"timeout": max(connect_timeout, statement_timeout)}
    else:
        server_settings = {"application_name": application_name}
        connect_args = {"timeout": connect_timeout, "server_settings": server_settings}
        if transaction_pooler:
            connect_args["statement_cache_size"] = 0
            connect_args["prepared_statement_cache_size"] = 0
            if statement_timeout:
                connect_args["command_timeout"] = statement_timeout
        elif statement_timeout:
            server_settings["statement_timeout"] = str(int(statement_timeout * 1000))
        # Last in, first out: under a light load the same few connections serve every
        # request and stay fresh (no liveness ping), while the others age and go.
        pool.update(
            poolclass=LingeringQueuePool, overflow_linger=overflow_linger, pool_use_lifo=True
        )
    engine = create_async_engine(
        url, connect_args=connect_args, isolation_level="AUTOCOMMIT", **pool
    )
    if url.get_backend_name() == "sqlite":
        _use_explicit_sqlite_transactions(engine)
    else:
        keep_backend_heap(engine)
    return engine


class LingeringQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio queue pool, except that a connection opened beyond
    ``pool_size`` stays open while the load that needed it lasts.

    The stock pool closes such an overflow connection as soon as it comes back to a pool
    that already holds ``pool_size`` idle ones. PostgreSQL's replies arrive in bursts (one
    WAL flush wakes every backend that waited on it), so under a load just above
    ``pool_size`` the pool fills and empties many times a second, closing overflow
    connections and opening new ones each time: a server process forked, an
    authentication and the driver's set-up for a share of the requests. Here up to
    ``pool_size + max_overflow`` connections wait in the pool, and every
    ``overflow_linger`` seconds those that the busiest moment of that span did not need
    are closed, down to ``pool_size``. The limit on open connections is unchanged.
    """

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        overflow_linger: float = OVERFLOW_LINGER,
        **kw: Any,
    ) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)
        self._kept = pool_size
        self._linger = overflow_linger
        room = pool_size + max(max_overflow, 0)
        self._pool = self._queue_class(room, use_lifo=self._pool.use_lifo)
        self._span_started = time.monotonic()
        self._busiest = 0
        """Most connections checked out at once since the span started."""

    def size(self) -> int:
        return self._kept

    def overflow(self) -> int:
        return self._overflow

    def checkedout(self) -> int:
        return self._kept - self._pool.qsize() + self._overflow

    def recreate(self) -> LingeringQueuePool:
        # QueuePool.recreate, but sized by pool_size rather than by the queue's room.
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator,
            pool_size=self._kept,
            max_overflow=self._max_overflow,
            overflow_linger=self._linger,
            pre_ping=self._pre_ping,
            use_lifo=self._pool.use_lifo,
            timeout=self._timeout,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def _do_get(self) -> ConnectionPoolEntry:
        # Counted before the get: a connection being opened for this caller is needed
        # from now on, and must not look surplus to a return while it connects.
        self._busiest = max(self._busiest, self.checkedout() + 1)
        return super()._do_get()

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        now = time.monotonic()
        if now - self._span_started < self._linger:
            return
        surplus = self._kept + self._overflow - max(self._kept, self._busiest)
        self._span_started, self._busiest = now, self.checkedout()
        for _ in range(surplus):
            try:
                idle = self._pool.get(False)
            except sqla_queue.Empty:
                return
            try:
                idle.close()
            finally:
                self._dec_overflow()


def keep_backend_heap(engine: AsyncEngine) -> None:
    """Have each new PostgreSQL backend keep the heap memory it frees between statements.

    PostgreSQL frees a statement's memory when the statement ends. glibc's malloc gives
    the free top of the heap back to the kernel once more than its trim threshold is
    free there, and serves every allocation above its mmap threshold with a mapping of
    its own, unmapped when freed: 128 KB each, until the process first frees such a
    mapping, when glibc raises the mmap threshold to that mapping's size and the trim
    threshold to twice it (its dynamic threshold). A backend that never handled a large
    value therefore maps, unmaps and trims memory around every statement that handles
    a document of some tens of KB, and page-faults it back in on the next one: kernel
    time on the database server for every write. A 2 MB string built and freed when
    the connection opens raises both thresholds at once, as the first large query
    would later. It costs one round trip per connection. A server whose thresholds are
    set (``GLIBC_TUNABLES``) keeps its own, and one on another allocator sees a 2 MB
    allocation; a server that refuses the statement still gets the connection.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with contextlib.suppress(asyncpg.PostgresError):
            await_(dbapi_connection.driver_connection.execute(KEEP_HEAP_STATEMENT))


def _use_explicit_sqlite_transactions(engine: AsyncEngine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.

    The sqlite3 module otherwise starts transactions implicitly and skips DDL, which
    breaks transactional migrations. This is SQLAlchemy's documented recipe, with
    ``BEGIN IMMEDIATE`` so a writer takes the lock up front rather than failing to
    upgrade a read lock half-way. WAL lets readers go on while one writer writes.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            # WAL is a property of the file, set once. Switching needs a lock SQLite will
            # not wait for; if another connection holds one, it is switching already.
            cursor.execute("PRAGMA journal_mode")
            if cursor.fetchone()[0] != "wal":
                with contextlib.suppress(engine.dialect.loaded_dbapi.OperationalError):
                    cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") not in (None, "AUTOCOMMIT"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def check_liveness_on_checkout(engine: AsyncEngine, idle_after: float) -> None:
    """Pre-ping, but only connections that sat idle for more than ``idle_after`` seconds.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout, and on a connection that is
    not yet in autocommit mode its asyncpg ping is BEGIN, ``;``, ROLLBACK: three round
    trips that cost a quarter of the throughput of a cached-statement read (measured
    with wrk: 0.51 against 0.64 of the raw asyncpg pool). As HikariCP does, a
    connection returned less than ``idle_after`` seconds ago is taken as alive; one the
    server has closed is caught for free by asyncpg's ``is_closed()``; any other is
    pinged with one empty query. A failed check invalidates every older pooled
    connection (the server probably restarted), and the pool opens a fresh one, so
    recovery after an outage needs no restart.
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if driver.is_closed():
            raise InvalidatePoolError("connection closed by the server")
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at <= idle_after:
            return  # brand new, or in use a moment ago
        try:
            await_(driver.fetchrow(";"))
        except Exception as exc:
            raise InvalidatePoolError(f"ping failed: {exc!r}") from exc
