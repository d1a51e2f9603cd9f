"""ConnectionPool against the real PostgreSQL: checkout, release, statistics, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import event, text

from service.db import _engine
from service.db._engine import await_
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.errors import ClosedError, DatabaseUnavailable, InvalidArgument, PoolExhausted
from tests.helpers import closed_port, side_dsn


async def test_connection_is_autocommit_and_returned(pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        assert pool.stats().checked_out == 1
        txid = (await conn.execute(text("SELECT txid_current_if_assigned()"))).scalar()
        assert txid is None  # no transaction was opened for a read
    assert pool.stats().checked_out == 0


async def test_transaction_commits_on_success_and_rolls_back_on_error(database_url: str) -> None:
    async with ConnectionPool(database_url) as pool:
        async with pool.transaction() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS pool_probe (n int)"))
            await conn.execute(text("DELETE FROM pool_probe"))

        async def insert_then_fail() -> None:
            async with pool.transaction() as conn:
                await conn.execute(text("INSERT INTO pool_probe VALUES (1)"))
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await insert_then_fail()
        async with pool.transaction() as conn:
            await conn.execute(text("INSERT INTO pool_probe VALUES (2)"))
        async with pool.connection() as conn:
            rows = (await conn.execute(text("SELECT n FROM pool_probe"))).scalars().all()
            await conn.execute(text("DROP TABLE pool_probe"))
        assert rows == [2]


async def test_engine_property_gives_transactional_connections(database_url: str) -> None:
    # A user's engine.begin() must be a real transaction, not silently autocommit.
    async with ConnectionPool(database_url) as pool:
        async with pool.transaction() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS engine_probe (n int)"))

        async def insert_then_fail() -> None:
            async with pool.engine.begin() as conn:
                await conn.execute(text("INSERT INTO engine_probe VALUES (1)"))
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            await insert_then_fail()
        async with pool.connection() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM engine_probe"))).scalar()
            await conn.execute(text("DROP TABLE engine_probe"))
        assert count == 0


async def test_cancellation_mid_query_returns_the_connection(pool: ConnectionPool) -> None:
    async def slow() -> None:
        async with pool.connection() as conn:
            await conn.execute(text("SELECT pg_sleep(5)"))

    tasks = [asyncio.create_task(slow()) for _ in range(5)]
    await asyncio.sleep(0.3)
    assert pool.stats().checked_out == 5
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    for _ in range(50):
        if pool.stats().checked_out == 0:
            break
        await asyncio.sleep(0.05)
    assert pool.stats().checked_out == 0
    # Every slot is usable again, and no query is left running on the server.
    async with pool.connection() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        running = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'"
                    " AND state = 'active'"
                )
            )
        ).scalar()
    assert running == 0


async def test_exhaustion_raises_pool_exhausted_and_counts_it(pg_url: str) -> None:
    async with ConnectionPool(pg_url, pool_size=1, max_overflow=1, pool_timeout=0.1) as pool:
        async with pool.connection(), pool.connection():
            stats = pool.stats()
            assert (stats.checked_out, stats.overflow) == (2, 1)
            with pytest.raises(PoolExhausted) as caught:
                async with pool.connection():
                    pass
            assert caught.value.retry_after >= 1
            assert pool.stats().timeouts == 1
        assert pool.stats().checked_out == 0


async def _server_connections(url: str, application_name: str) -> int:
    """The connections the server holds for ``application_name`` (not the pool's view)."""
    conn = await asyncpg.connect(side_dsn(url))
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            application_name,
        )
        return count
    finally:
        await conn.close()


async def _burst(pool: ConnectionPool, size: int) -> None:
    """``size`` short statements at once, so every connection comes back together."""

    async def one() -> None:
        async with pool.connection() as conn:
            await conn.execute(text("SELECT pg_sleep(0.005)"))

    await asyncio.gather(*(one() for _ in range(size)))


@pytest.mark.one_session
async def test_bursts_above_pool_size_reuse_the_overflow_connections(pg_url: str) -> None:
    # Each burst returns all four connections at once, to a pool that keeps two: the
    # stock queue pool closed two of them every time and opened two for the next.
    name = "burst-probe"
    async with ConnectionPool(pg_url, pool_size=2, max_overflow=2, application_name=name) as pool:
        await _burst(pool, 4)
        opened: list[object] = []
        event.listen(pool.engine.sync_engine.pool, "connect", lambda *_: opened.append(1))
        for _ in range(20):
            await _burst(pool, 4)
        assert opened == [], "an overflow connection was closed and opened again"
        assert (pool.stats().idle, pool.stats().overflow) == (4, 2)
        assert await _server_connections(pg_url, name) == 4


@pytest.mark.one_session
async def test_overflow_connections_close_once_the_load_has_dropped(pg_url: str) -> None:
    name = "linger-probe"
    async with ConnectionPool(
        pg_url, pool_size=1, max_overflow=2, overflow_linger=0.3, application_name=name
    ) as pool:
        await _burst(pool, 3)
        assert await _server_connections(pg_url, name) == 3
        # One statement at a time for longer than the linger: the two overflow
        # connections are not needed for a whole span, and close.
        loop = asyncio.get_running_loop()
        until = loop.time() + 0.8
        while loop.time() < until:
            await _burst(pool, 1)
        stats = pool.stats()
        assert (stats.idle, stats.overflow, stats.checked_out) == (1, 0, 0)
        assert await _server_connections(pg_url, name) == 1
        # The load comes back: three at once open the overflow again, up to the limit.
        await _burst(pool, 3)
        assert await _server_connections(pg_url, name) == 3


async def test_a_negative_overflow_linger_is_refused(pg_url: str) -> None:
    with pytest.raises(InvalidArgument, match="overflow_linger must be >= 0"):
        ConnectionPool(pg_url, overflow_linger=-1)


@pytest.mark.one_session
async def test_a_light_load_keeps_using_the_connection_returned_last(pg_url: str) -> None:
    # One request every 0.3 s on five open connections: taken in turn, each would sit
    # idle 1.5 s between uses, past the 1 s after which a checkout pings it first.
    async with ConnectionPool(pg_url, pool_size=5, max_overflow=0) as pool:
        await _burst(pool, 5)
        backends = set()
        for _ in range(6):
            await asyncio.sleep(0.3)
            async with pool.connection() as conn:
                backends.add((await conn.execute(text("SELECT pg_backend_pid()"))).scalar())
        assert len(backends) == 1


def _page_faults(pid: int) -> int:
    """Minor page faults of a local process so far (``minflt`` in /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


async def test_a_backend_keeps_its_heap_between_writes_of_large_documents(pg_url: str) -> None:
    # glibc in a fresh backend gives its free heap back after each 40 KB upsert and
    # faults it in again on the next: dozens of page faults a write on a stock
    # PostgreSQL without keep_backend_heap, a few with it.
    document = orjson.dumps({f"k{i}": f"value {i:>20}" for i in range(1300)})
    async with ConnectionPool(pg_url, pool_size=1, max_overflow=0) as pool:
        store = ResultStore(pool)
        async with pool.connection() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        comm = Path(f"/proc/{pid}/comm")
        if not comm.exists() or comm.read_text().strip() != "postgres":
            pytest.skip("PostgreSQL runs on another host or in a container: no /proc to read")
        for n in range(30):
            await store.put(f"heap-{n % 10}", document)
        before = _page_faults(pid)
        writes = 300
        for n in range(writes):
            await store.put(f"heap-{n % 10}", document)
        per_write = (_page_faults(pid) - before) / writes
    assert per_write < 12, f"{per_write:.1f} page faults per write"


async def test_a_server_that_refuses_the_heap_statement_still_connects(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a PostgreSQL-compatible server without repeat(), or a statement_timeout
    # shorter than the statement, would: the connection is still handed out.
    monkeypatch.setattr(_engine, "KEEP_HEAP_STATEMENT", "SELECT 1 / 0")
    pool = ConnectionPool(pg_url, pool_size=1, max_overflow=0)
    async with pool, pool.connection() as conn:
        assert (await conn.execute(text("SELECT 42"))).scalar_one() == 42


async def test_waiting_counts_callers_queued_for_a_connection(pg_url: str) -> None:
    async with ConnectionPool(pg_url, pool_size=1, max_overflow=0, pool_timeout=5) as pool:
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.connection():
                await release.wait()

        async def queue() -> None:
            async with pool.connection():
                pass

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.1)
        waiters = [asyncio.create_task(queue()) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert pool.stats().waiting == 3
        release.set()
        await asyncio.gather(holder, *waiters)
        assert pool.stats().waiting == 0
        assert pool.stats().checked_out == 0


async def test_unreachable_database_is_reported_fast() -> None:
    async with ConnectionPool(
        f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/x", connect_timeout=1
    ) as pool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DatabaseUnavailable) as caught:
            await pool.ping()
        assert loop.time() - started < 1.0
        assert "ConnectionRefused" in str(caught.value)
        assert pool.stats().checked_out == 0


async def test_missing_database_is_unavailable_not_a_crash(pg_url: str) -> None:
    """The server refuses the connection (as it does while starting up): every way in
    says DatabaseUnavailable, run_driver too, whose checkout sees the driver's own
    error rather than SQLAlchemy's wrapped one."""
    url = pg_url.rsplit("/", 1)[0] + "/no_such_database_here"
    async with ConnectionPool(url) as pool:
        with pytest.raises(DatabaseUnavailable):
            await pool.ping()
        with pytest.raises(DatabaseUnavailable):
            await pool.run(lambda conn: conn.execute(text("SELECT 1")))
        with pytest.raises(DatabaseUnavailable):
            await pool.run_driver(lambda driver: await_(driver.fetchval("SELECT 1")))
        assert pool.stats().checked_out == 0


async def test_password_never_appears_in_safe_url() -> None:
    pool = ConnectionPool("postgresql+asyncpg://app:s3cret@127.0.0.1:1/x")
    assert "s3cret" not in pool.safe_url
    await pool.aclose()


async def test_closed_pool_refuses_use_and_aclose_is_idempotent(pg_url: str) -> None:
    pool = ConnectionPool(pg_url)
    await pool.ping()
    await pool.aclose()
    await pool.aclose()
    assert pool.closed
    with pytest.raises(ClosedError):
        async with pool.connection():
            pass
    with pytest.raises(ClosedError):
        _ = pool.engine


async def test_get_connection_from_the_specification(pool: ConnectionPool) -> None:
    conn = await pool.get_connection()
    try:
        assert (await conn.execute(text("SELECT 41 + 1"))).scalar() == 42
        assert pool.stats().checked_out == 1
    finally:
        await conn.close()
    assert pool.stats().checked_out == 0


async def test_statement_timeout_is_enforced_server_side(pg_url: str) -> None:
    async with ConnectionPool(pg_url, statement_timeout=0.2) as pool:

        async def sleep() -> None:
            async with pool.connection() as conn:
                await conn.execute(text("SELECT pg_sleep(2)"))

        with pytest.raises(DatabaseUnavailable, match=r"QueryCanceled|cancel"):
            await sleep()
        await pool.ping()  # the connection survived and the pool still works


async def test_a_connection_killed_while_pooled_is_replaced_unseen(pg_url: str) -> None:
    # Reused within the idle window, so no ping: asyncpg's is_closed() must catch it.
    async with ConnectionPool(pg_url, pool_size=2, ping_idle_after=60) as pool:
        async with pool.connection() as conn:
            before = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        killer = await asyncpg.connect(side_dsn(pg_url))
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", before)
        finally:
            await killer.close()
        await asyncio.sleep(0.2)
        async with pool.connection() as conn:
            after = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        assert after != before
        assert pool.stats().checked_out == 0


@pytest.mark.parametrize("mode", ["connection", "transaction", "run"])
async def test_repeated_cancellation_during_release_loses_no_slot(pg_url: str, mode: str) -> None:
    # Cancel scopes (anyio, TaskGroup shutdown) can cancel again while the connection
    # is being returned; every slot must still come back.
    async with ConnectionPool(pg_url, pool_size=4, max_overflow=0) as pool:

        async def work() -> None:
            if mode == "run":
                await pool.run(lambda conn: conn.execute(text("SELECT pg_sleep(0.2)")))
                return
            block = pool.transaction() if mode == "transaction" else pool.connection()
            async with block as conn:
                await conn.execute(text("SELECT pg_sleep(0.2)"))

        for delay in (0.05, 0.19, 0.2, 0.21, 0.25):
            tasks = [asyncio.create_task(work()) for _ in range(4)]
            await asyncio.sleep(delay)
            for task in tasks:
                task.cancel()
            await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _ in range(40):
                if pool.stats().checked_out == 0:
                    break
                await asyncio.sleep(0.025)
            assert pool.stats().checked_out == 0, delay
            await pool.ping()


async def test_run_returns_the_result_and_the_connection(pool: ConnectionPool) -> None:
    assert await pool.run(lambda conn: conn.execute(text("SELECT 6 * 7")).scalar()) == 42
    assert pool.stats().checked_out == 0

    def fail(conn: Any) -> None:
        conn.execute(text("SELECT 1"))
        raise LookupError("the operation's own error")

    with pytest.raises(LookupError):
        await pool.run(fail)
    assert pool.stats().checked_out == 0


async def test_run_translates_checkout_errors(pg_url: str) -> None:
    async with ConnectionPool(
        f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/x", connect_timeout=1
    ) as down:
        with pytest.raises(DatabaseUnavailable):
            await down.run(lambda conn: conn.execute(text("SELECT 1")))
    async with ConnectionPool(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.1) as busy:
        async with busy.connection():
            with pytest.raises(PoolExhausted):
                await busy.run(lambda conn: conn.execute(text("SELECT 1")))
        assert busy.stats().timeouts == 1
        assert busy.stats().checked_out == 0


async def test_callers_get_connections_in_the_order_they_asked(pg_url: str) -> None:
    """A connection coming back goes to the longest waiter, never to a caller that
    asks at that moment (SQLAlchemy's and asyncpg's own queues let it barge in)."""
    async with ConnectionPool(pg_url, pool_size=1, max_overflow=0, pool_timeout=10) as pool:
        order: list[str] = []

        async def greedy() -> None:  # asks again the moment it gives the connection back
            for n in range(3):
                async with pool.connection():
                    order.append(f"greedy-{n}")
                    await asyncio.sleep(0.02)

        async def patient(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            async with pool.connection():
                order.append(name)

        await asyncio.gather(greedy(), patient("first", 0.005), patient("second", 0.01))
        assert order == ["greedy-0", "first", "second", "greedy-1", "greedy-2"]
        assert (pool.stats().waiting, pool.stats().checked_out) == (0, 0)


async def test_waiters_that_give_up_leave_no_slot_behind(pg_url: str) -> None:
    async with ConnectionPool(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.2) as pool:
        async with pool.connection():
            cancelled = asyncio.create_task(pool.run(lambda conn: 1))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(PoolExhausted):
                await pool.run(lambda conn: 1)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # Every slot came back: the pool's one connection serves three callers in turn.
        assert await asyncio.gather(*(pool.run(lambda conn: 1) for _ in range(3))) == [1, 1, 1]
        assert pool.stats().timeouts == 1
        assert (pool.stats().waiting, pool.stats().checked_out) == (0, 0)
