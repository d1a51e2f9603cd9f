"""The cache over a Redis that goes away, never answers, or has too few connections.

Every test runs its own ``redis-server`` on a free loopback port (never the shared one on
6379), so it can stop and start it at will; the server is always terminated afterwards.
A dead or hung Redis must cost a bounded wait and then fail open (a read is a miss, a
write is skipped), the circuit breaker must stop the calls after a few failures and let
them through again once Redis is back, and the warning log must stay quiet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from service.cache.backends import RedisBackend
from service.cache.breaker import CircuitBreaker
from service.cache.manager import CacheManager
from tests.helpers import unique_prefix
from tests.support.private_redis import PrivateRedis, private_redis

pytestmark = pytest.mark.slow

T = TypeVar("T")

MANAGER_LOGGER = "service.cache.manager"


@pytest.fixture
async def redis_server() -> AsyncIterator[PrivateRedis]:
    async with private_redis() as server:
        yield server


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on a free loopback port that accepts and reads but never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        port: int = server.sockets[0].getsockname()[1]
        yield port
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for writer in writers:
            with suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """What ``awaitable`` returns, and the seconds it took."""
    started = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - started


def manager_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == MANAGER_LOGGER and r.levelno >= logging.WARNING]


@pytest.mark.redis
async def test_fails_open_opens_the_breaker_and_recovers(redis_server: PrivateRedis) -> None:
    cache = CacheManager(
        RedisBackend(redis_server.url, socket_timeout=0.2),
        prefix=unique_prefix("faults"),
        breaker=CircuitBreaker(failure_threshold=3, cooldown=1.0),
    )
    async with asyncio.timeout(20), cache:
        await cache.set("k", {"v": 1})
        assert await cache.get("k") == {"v": 1}
        assert cache.stats().errors == 0
        assert cache.stats().breaker == "closed"

        await redis_server.stop()

        # Three failures, each a miss or a skipped write within a bounded wait.
        value, elapsed = await timed(cache.get("k"))
        assert value is None
        assert elapsed < 0.5, f"get took {elapsed:.3f} s"
        assert cache.stats().errors == 1
        _, elapsed = await timed(cache.set("k", {"v": 2}))
        assert elapsed < 0.5, f"set took {elapsed:.3f} s"
        assert cache.stats().errors == 2
        assert cache.stats().breaker == "closed"
        value, elapsed = await timed(cache.get("k"))
        assert value is None
        assert elapsed < 0.5, f"get took {elapsed:.3f} s"
        assert cache.stats().errors == 3
        assert cache.stats().breaker == "open"

        # Open: calls are not sent at all, so they cost nothing and are not errors.
        for i in range(5):
            value, elapsed = await timed(cache.get("k"))
            assert value is None
            assert elapsed < 0.01, f"skipped get took {elapsed * 1000:.1f} ms"
            _, elapsed = await timed(cache.set("k", {"v": 3}))
            assert elapsed < 0.01, f"skipped set took {elapsed * 1000:.1f} ms"
            stats = cache.stats()
            assert stats.skipped == 2 * (i + 1)
            assert stats.errors == 3
            assert stats.breaker == "open"

        await redis_server.start()

        # Same manager, same pool: once the cool-down is over, a trial closes the breaker.
        deadline = time.monotonic() + 10
        while True:
            await cache.set("k", {"v": "back"})
            if await cache.get("k") == {"v": "back"} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert await cache.get("k") == {"v": "back"}
        assert cache.stats().breaker == "closed"


async def test_a_redis_that_never_answers_costs_one_socket_timeout() -> None:
    socket_timeout = 0.2
    async with asyncio.timeout(10), silent_server() as port:
        cache = CacheManager(
            RedisBackend(f"redis://127.0.0.1:{port}/0", socket_timeout=socket_timeout),
            prefix=unique_prefix("faults"),
        )
        async with cache:
            value, elapsed = await timed(cache.get("k"))
            assert value is None
            assert elapsed < socket_timeout + 0.3, f"get took {elapsed:.3f} s"
            stats = cache.stats()
            assert stats.errors == 1
            assert stats.misses == 1
            assert stats.breaker == "closed"


@pytest.mark.redis
async def test_a_burst_waits_for_the_two_connections(
    redis_server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=MANAGER_LOGGER)
    cache = CacheManager(
        RedisBackend(redis_server.url, max_connections=2, pool_timeout=0.2),
        prefix=unique_prefix("faults"),
    )
    observer = aioredis.Redis.from_url(redis_server.url)
    try:
        async with asyncio.timeout(10), cache:

            async def round_trip(i: int) -> object:
                await cache.set(f"k{i}", {"i": i})
                return await cache.get(f"k{i}")

            results = await asyncio.gather(*(round_trip(i) for i in range(50)))
            assert results == [{"i": i} for i in range(50)]
            stats = cache.stats()
            assert stats.errors == 0
            assert stats.hits == 50
            # The pool never opened more than its two connections (plus the observer).
            info = await observer.info("clients")
            assert info["connected_clients"] <= 3, info
    finally:
        await observer.aclose()
    assert manager_warnings(caplog) == []


@pytest.mark.redis
async def test_the_outage_warning_is_rate_limited(
    redis_server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=MANAGER_LOGGER)
    cache = CacheManager(
        RedisBackend(redis_server.url, socket_timeout=0.2),
        prefix=unique_prefix("faults"),
        breaker=CircuitBreaker(failure_threshold=1000, cooldown=1.0),
    )
    async with asyncio.timeout(15), cache:
        await cache.set("k", {"v": 1})
        assert await cache.get("k") == {"v": 1}
        await redis_server.stop()

        for _ in range(50):
            assert await cache.get("k") is None
        stats = cache.stats()
        assert stats.errors == 50
        assert stats.skipped == 0
        assert stats.breaker == "closed"
    records = manager_warnings(caplog)
    assert 1 <= len(records) <= 2, [r.getMessage() for r in records]
