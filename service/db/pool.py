"""ConnectionPool: the one AsyncEngine of a process, its pool, and its statistics.

Asynchronous throughout: SQLAlchemy's ``AsyncEngine`` on asyncpg
(or aiosqlite for the embedded default) with ``AsyncAdaptedQueuePool``, the async twin of
``QueuePool``. Two promises matter to callers:

* a connection taken with ``async with pool.connection()`` always goes back to the pool,
  also when the task is cancelled half-way;
* failures arrive as this package's errors, fast: :class:`PoolExhausted` after
  ``pool_timeout`` seconds of waiting, :class:`DatabaseUnavailable` when the server
  cannot be reached. Nothing here retries or caches a failure, so the first request
  after the database comes back gets a fresh connection and succeeds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from service import defaults
from service.db._engine import OVERFLOW_LINGER, check_liveness_on_checkout, create_engine
from service.db.pgbouncer import split_pooler
from service.errors import ClosedError, DatabaseUnavailable, InvalidArgument, PoolExhausted

logger = logging.getLogger(__name__)

T = TypeVar("T")
_C = TypeVar("_C")

# SQLSTATEs that mean "the server is not there right now" rather than "your SQL is wrong":
# class 08 (connection exception), 53300 too_many_connections, 57P01-57P03 (shutdown,
# crash, still starting) and 57014 query_canceled (our statement_timeout fired).
_UNAVAILABLE_STATES = ("08", "53300", "57P01", "57P02", "57P03", "57014")

# What a transaction runs at: each database's default level.
_TRANSACTIONAL_LEVEL = {"postgresql": "READ COMMITTED", "sqlite": "SERIALIZABLE"}


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool, cheap enough to take on every metrics scrape."""

    size: int
    """Connections the pool keeps open (``DB_POOL_SIZE``)."""
    max_overflow: int
    """Extra connections it may open under load (``DB_MAX_OVERFLOW``)."""
    checked_out: int
    """Connections in use right now."""
    idle: int
    """Open connections waiting in the pool."""
    overflow: int
    """Connections open beyond ``size`` right now."""
    waiting: int
    """Callers waiting for a connection (or for a new one to be opened) right now."""
    timeouts: int
    """Times a caller gave up waiting (each one a :class:`PoolExhausted`), since start."""

    def as_dict(self) -> dict[str, int]:
        """The snapshot as a JSON-ready dict."""
        return asdict(self)


class ConnectionPool:
    """Pooled async connections to the results database.

    Usable on its own from any asyncio code::

        async with ConnectionPool("postgresql+asyncpg://app@db/results") as pool:
            async with pool.connection() as conn:
                rows = (await conn.execute(text("SELECT 1"))).all()

    ``connection()`` gives an autocommit connection: each statement commits by itself and
    no BEGIN/ROLLBACK round trips are paid, which is what single-statement reads and
    upserts want. ``transaction()`` gives one that commits when the block ends.

    At most ``pool_size + max_overflow`` connections are open. Those beyond
    ``pool_size`` stay open while the load that opened them lasts, and close once
    ``overflow_linger`` seconds went by without needing them (see
    :class:`service.db._engine.LingeringQueuePool`).
    """

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = defaults.DB_POOL_SIZE,
        max_overflow: int = defaults.DB_MAX_OVERFLOW,
        pool_timeout: float = defaults.DB_POOL_TIMEOUT,
        pool_recycle: int = defaults.DB_POOL_RECYCLE,
        pre_ping: bool = defaults.DB_POOL_PRE_PING,
        ping_idle_after: float = 1.0,
        overflow_linger: float = OVERFLOW_LINGER,
        connect_timeout: float = defaults.DB_CONNECT_TIMEOUT,
        statement_timeout: float = defaults.DB_STATEMENT_TIMEOUT,
        application_name: str = "service",
    ) -> None:
        try:
            self._url, self._behind_pgbouncer = split_pooler(make_url(url))
        except ValueError as exc:
            raise InvalidArgument(f"database URL: {exc}") from None
        if overflow_linger < 0:
            raise InvalidArgument(f"overflow_linger must be >= 0 seconds, got {overflow_linger}")
        self._max_overflow = max_overflow
        self._engine = create_engine(
            self._url,
            transaction_pooler=self._behind_pgbouncer,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=pool_recycle,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            application_name=application_name,
            overflow_linger=overflow_linger,
        )
        if pre_ping and self._engine.dialect.name == "postgresql":
            check_liveness_on_checkout(self._engine, ping_idle_after)
        # The engine itself is autocommit (set once per connection, so checkouts pay
        # nothing); transactions go through a view that switches the level per checkout.
        self._transactional = self._engine.execution_options(
            isolation_level=_TRANSACTIONAL_LEVEL[self._engine.dialect.name]
        )
        self._waiting = 0
        self._timeouts = 0
        self._connect_errors: tuple[type[BaseException], ...] = (
            DBAPIError,
            OSError,
            # raw_connection() (run_driver) raises the driver's own errors, unwrapped.
            self._engine.dialect.loaded_dbapi.Error,
        )
        self._gate = _FairGate(pool_size + max_overflow, pool_timeout)
        self.on_acquire: Callable[[float], None] | None = None
        """Called with the seconds each successful checkout waited (metrics use it)."""
        self._closed = False

    @property
    def engine(self) -> AsyncEngine:
        """The AsyncEngine, for callers that want SQLAlchemy directly.

        Its connections are transactional as usual (``begin()`` / ``commit()`` mean what
        they say); only :meth:`connection` hands out autocommit ones.
        """
        self._check_open()
        return self._transactional

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self._engine.dialect.name

    @property
    def behind_pgbouncer(self) -> bool:
        """Whether the URL said ``pgbouncer=true``: each transaction may run on another
        server connection, so nothing may rely on a session (its settings, its
        session-level locks, its prepared statements) outliving a transaction."""
        return self._behind_pgbouncer

    @property
    def safe_url(self) -> str:
        """The database URL with any password masked: safe for logs and reports."""
        return self._url.render_as_string(hide_password=True)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._closed

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled autocommit connection, returned to the pool when the block exits.

        Raises :class:`PoolExhausted` or :class:`DatabaseUnavailable` on checkout, and
        :class:`DatabaseUnavailable` if the server goes away during the block.
        """
        await self._enter()
        try:
            conn = await self._checkout(self._engine)
            try:
                with _translate_errors():
                    yield conn
            finally:
                await _return_to_pool(conn)
        finally:
            self._gate.release()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection inside a transaction that commits when the block succeeds.

        An exception in the block rolls the transaction back and propagates.
        """
        await self._enter()
        try:
            conn = await self._checkout(self._transactional)
            try:
                with _translate_errors():
                    async with conn.begin():
                        yield conn
            finally:
                await _return_to_pool(conn)
        finally:
            self._gate.release()

    async def run(self, operation: Callable[[Connection], T]) -> T:
        """Run ``operation(connection)`` on a pooled autocommit connection; return its result.

        ``operation`` is synchronous SQLAlchemy code (``conn.execute(...).first()``).
        Checkout, operation and return share one greenlet, where ``connection()`` plus
        ``execute()`` switch into three: a third less CPU per cached-statement read,
        measured. The connection goes back to the pool also on error or cancellation;
        errors are translated as :meth:`connection` translates them.
        """
        return await self._in_greenlet(self._run_in_greenlet, operation)

    async def run_driver(self, operation: Callable[[Any], T]) -> T:
        """:meth:`run` for an operation on the driver's own connection (asyncpg's), with
        no SQLAlchemy ``Connection`` around it: what the store's prepared statements
        need. That object's construction, events and return were about a quarter of the
        CPU of a one-row read, measured. Checkout, checkout checks, error translation
        and the return stay the pool's, as in :meth:`run`.
        """
        return await self._in_greenlet(self._run_on_driver, operation)

    async def _in_greenlet(
        self, runner: Callable[[Callable[[_C], T]], T], operation: Callable[[_C], T]
    ) -> T:
        """``runner(operation)`` in a greenlet, once a connection slot is free."""
        self._check_open()
        await self._enter()
        try:
            result: T = await greenlet_spawn(runner, operation)
        finally:
            self._gate.release()
        return result

    async def get_connection(self) -> AsyncConnection:
        """The specification's call: a checked-out connection that the caller must close.

        Prefer ``async with pool.connection()``, which cannot leak a connection.
        """
        return await self._checkout(self._transactional)

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise :class:`DatabaseUnavailable` if the database does not answer."""
        async with self.connection() as conn:
            await conn.execute(text("SELECT 1"))

    def stats(self) -> PoolStats:
        """Live statistics of the pool (no I/O)."""
        pool = self._engine.pool
        if not isinstance(pool, QueuePool):  # pragma: no cover - we always build a QueuePool
            raise TypeError(f"unexpected pool class {type(pool).__name__}")
        return PoolStats(
            size=pool.size(),
            max_overflow=self._max_overflow,
            checked_out=pool.checkedout(),
            idle=pool.checkedin(),
            overflow=max(0, pool.overflow()),
            waiting=self._waiting + self._gate.waiting,
            timeouts=self._timeouts,
        )

    async def aclose(self) -> None:
        """Close every pooled connection. Idempotent; the pool is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        await self._engine.dispose()
        logger.info("database pool closed url=%s", self.safe_url)

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the connection pool is closed")

    async def _enter(self) -> None:
        """Wait for a connection slot, in arrival order; PoolExhausted after pool_timeout."""
        try:
            await self._gate.acquire()
        except TimeoutError:
            self._timeouts += 1
            raise PoolExhausted("every database connection stayed busy; try again") from None

    async def _checkout(self, engine: AsyncEngine) -> AsyncConnection:
        self._check_open()
        with self._checking_out():
            return await engine.connect()

    def _run_in_greenlet(self, operation: Callable[[Connection], T]) -> T:
        with self._checking_out():
            conn = self._engine.sync_engine.connect()
        with conn, _translate_errors():
            try:
                return operation(conn)
            except BaseException as exc:
                _invalidate_if_broken(conn, exc)
                raise

    def _run_on_driver(self, operation: Callable[[Any], T]) -> T:
        with self._checking_out():
            pooled = self._engine.sync_engine.raw_connection()
        try:
            with _translate_errors():
                driver = pooled.driver_connection
                try:
                    return operation(driver)
                except BaseException as exc:
                    if pooled.is_valid and _is_broken(driver, exc):
                        with contextlib.suppress(Exception):
                            pooled.invalidate(exc if isinstance(exc, Exception) else None)
                    raise
        finally:
            pooled.close()

    @contextlib.contextmanager
    def _checking_out(self) -> Iterator[None]:
        """Count the caller as waiting and translate what a checkout can raise."""
        self._waiting += 1
        started = time.perf_counter()
        try:
            yield
            if self.on_acquire is not None:
                self.on_acquire(time.perf_counter() - started)
        except PoolTimeoutError:
            self._timeouts += 1
            raise PoolExhausted("every database connection stayed busy; try again") from None
        except self._connect_errors as exc:
            raise DatabaseUnavailable(f"database unavailable: {_describe(exc)}") from exc
        finally:
            self._waiting -= 1


class _FairGate:
    """Connection slots handed to callers strictly in the order they asked.

    SQLAlchemy's pool queue lets a caller that arrives just as a connection comes back
    take it ahead of the callers already waiting (its asyncio queue tries ``get_nowait``
    first, and a robbed waiter queues again at the back); asyncpg's pool does the same
    (SQLAlchemy issue 7679, asyncpg issue 1247). Under sustained load that starves a
    few requests: measured with wrk at 64 connections on a pool of 30, the p99 of a
    read was 3.5 times the raw asyncpg pool's. This gate admits at most as many
    callers as the pool has connections and hands each freed slot to the longest
    waiter, so the pool's own queue never has to choose.
    """

    __slots__ = ("_free", "_waiters", "patience", "waiting")

    def __init__(self, slots: int, patience: float) -> None:
        self._free = slots
        self.patience = patience
        """Seconds a caller waits for a slot before TimeoutError."""
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.waiting = 0

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.waiting += 1
        try:
            async with asyncio.timeout(self.patience):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as this caller gave up: pass it on
            raise
        finally:
            self.waiting -= 1

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # one that gave up (timed out, cancelled) is skipped
                waiter.set_result(None)
                return
        self._free += 1


class _translate_errors:
    """Turn "the server went away" during a block into :class:`DatabaseUnavailable`.

    Other database errors (bad SQL, constraint violations) are the caller's to see.
    A plain class rather than ``contextmanager`` so it adds no generator frame.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        # Statements the store runs on the asyncpg connection itself raise asyncpg's own
        # errors: a lost connection is an InterfaceError, a server error a PostgresError.
        if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError) or (
            isinstance(exc, DBAPIError | asyncpg.PostgresError) and _is_unavailable(exc)
        ):
            raise DatabaseUnavailable(f"database unavailable: {_describe(exc)}") from exc


def _invalidate_if_broken(conn: Connection, exc: BaseException) -> None:
    """Keep a connection the driver path may have broken out of the pool.

    SQLAlchemy invalidates a connection when its own execution sees a disconnect; the
    store's statements run on the asyncpg connection directly, so their errors never
    pass that check. A connection lost mid-statement, one the server is shutting down
    (its protocol may still be consuming the error, waiting for a ReadyForQuery that
    never comes), an operation interrupted by a cancellation, or a driver that says its
    state is inconsistent must not be handed to the next caller ("cannot switch to
    state 12; another operation (2) is in progress"): it is closed and replaced.
    """
    if isinstance(exc, DBAPIError) or conn.invalidated:
        return  # SQLAlchemy's own execution: it has decided already
    if _is_broken(getattr(conn.connection, "driver_connection", None), exc):
        with contextlib.suppress(Exception):
            conn.invalidate(exc if isinstance(exc, Exception) else None)


def _is_broken(driver: Any, exc: BaseException) -> bool:
    """Whether ``exc``, raised by an operation on ``driver``, leaves it unfit for reuse."""
    is_closed = getattr(driver, "is_closed", None)  # asyncpg's; aiosqlite has none
    return (
        not isinstance(exc, Exception)  # cancelled (or exiting) mid-operation
        or isinstance(
            exc,
            OSError
            | asyncpg.InterfaceError
            | asyncpg.InternalClientError
            | asyncpg.PostgresConnectionError,
        )
        or (isinstance(exc, asyncpg.PostgresError) and _is_unavailable(exc))
        or (is_closed is not None and is_closed())
    )


async def _return_to_pool(conn: AsyncConnection) -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        # The block is being cancelled, and a cancel scope may cancel again at every
        # await: finish the return shielded so the slot is not lost. Shielding costs a
        # task, a tenth of a cached read, so the ordinary path returns directly.
        await asyncio.shield(conn.close())
    else:
        await conn.close()


def _is_unavailable(exc: DBAPIError | asyncpg.PostgresError) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = sqlstate(exc)
    return state is not None and state.startswith(_UNAVAILABLE_STATES)


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a (wrapped) driver error, if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        for attribute in ("sqlstate", "pgcode"):
            value = getattr(seen, attribute, None)
            if isinstance(value, str):
                return value
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def _describe(exc: BaseException) -> str:
    """A one-line reason without the statement or its parameters (they may hold data)."""
    inner = getattr(exc, "orig", None) or exc
    if isinstance(inner, TimeoutError) and not str(inner):
        # asyncpg's own command_timeout (behind PgBouncer), which cancels the statement.
        return "TimeoutError: the statement ran past statement_timeout and was cancelled"
    return f"{type(inner).__name__}: {str(inner).splitlines()[0] if str(inner) else ''}"[:300]
