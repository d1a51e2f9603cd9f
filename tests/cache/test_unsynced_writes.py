"""A write that could not reach Redis is never hidden: not by a restart, not on a replica.

Each test runs its own ``redis-server`` (frozen with SIGSTOP to stall it) and the real
PostgreSQL. The write's version is noted in the ``unsynced_results`` table before it
is acknowledged; every ResultCache reads the notes when it starts and then every
UNSYNCED_POLL seconds, and reads a noted id from PostgreSQL until Redis is repaired.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from service.cache import result_cache as result_cache_module
from service.cache.backends import RedisBackend
from service.cache.breaker import CircuitBreaker
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.result_cache import UNSYNCED_POLL, ResultCache
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.model import StoredResult
from tests.helpers import read_until_l1_holds, unique_id
from tests.support.private_redis import PrivateRedis, private_redis

pytestmark = [pytest.mark.slow, pytest.mark.redis]

TIMEOUT = 0.2
"""REDIS_TIMEOUT of these caches: a frozen Redis costs this much per call."""


@asynccontextmanager
async def replica(
    store: ResultStore, server: PrivateRedis, prefix: str, *, l1_ttl: float = 60.0
) -> AsyncIterator[ResultCache]:
    """A ResultCache as one replica of the service has it, started and closed.

    L1_TTL is long on purpose: a stale L1 entry must be dropped because of the notes,
    not because it expired.
    """
    manager = CacheManager(
        RedisBackend(server.url, socket_timeout=TIMEOUT),
        prefix=prefix,
        default_ttl=3600,
        breaker=CircuitBreaker(failure_threshold=1000),
    )
    cache = ResultCache(manager, store, l1=LocalCache(1 << 20), l1_ttl=l1_ttl)
    try:
        await cache.start()
        yield cache
    finally:
        await cache.aclose()
        await manager.aclose()


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[ResultStore]:
    async with ConnectionPool(pg_url) as pool:
        yield ResultStore(pool)


def version_of(found: object) -> int:
    assert isinstance(found, StoredResult), found
    return found.meta.version


def namespace(prefix: str) -> str:
    """The name a ResultCache on ``prefix`` gives its notes."""
    return f"{prefix}:results"


async def wait_until_repaired(
    store: ResultStore, observer: aioredis.Redis, key: str, rid: str, version: int
) -> float:
    """Seconds until Redis holds ``version`` of the id and its note is gone."""
    started = time.monotonic()
    cache = namespace(key.split(":", 1)[0])
    while True:
        held = await observer.get(key)
        noted = [n for n in await store.unsynced(cache, 1000) if n[0] == rid]
        if isinstance(held, bytes) and held.startswith(f"{version} ".encode()) and not noted:
            return time.monotonic() - started
        assert time.monotonic() - started < 15, f"not repaired: Redis {held!r}, notes {noted}"
        await asyncio.sleep(0.05)


async def test_a_restart_during_a_stall_never_serves_the_hidden_version(
    store: ResultStore,
) -> None:
    rid = unique_id("restart")
    prefix = f"u{uuid.uuid4().hex[:8]}"
    key = f"{prefix}:results:{rid}"
    async with private_redis() as server, aioredis.Redis.from_url(server.url) as observer:
        async with replica(store, server, prefix) as before:
            await before.put(rid, {"n": 1})
            old_entry = await observer.get(key)
            assert isinstance(old_entry, bytes)
            assert old_entry.startswith(b"1 ")
            server.freeze()
            try:
                started = time.monotonic()
                outcome = await before.put(rid, {"n": 2})  # acknowledged, Redis or not
                assert outcome.meta.version == 2
                assert time.monotonic() - started < 5 * TIMEOUT
                noted = await store.unsynced(namespace(prefix), 1000)
                assert (rid, 2) in noted, "noted before acknowledged"
            finally:
                # The process ends (a deploy) while Redis is still frozen.
                closing = asyncio.ensure_future(before.aclose())
                await asyncio.sleep(0.3)
                server.thaw()
                await closing
        # The frozen server ran the write it had buffered; put the old entry back, as
        # a Redis restored from a snapshot (or one that lost that write) would hold it.
        await observer.set(key, old_entry)

        async with replica(store, server, prefix) as after:
            for _ in range(5):
                read = await after.get(rid)
                assert version_of(read.found) == 2, "the new process served the old entry"
            repaired = await wait_until_repaired(store, observer, key, rid, 2)
            read = await after.get(rid)
            assert version_of(read.found) == 2
    print(f"\nRedis repaired {repaired:.2f} s after the new process started")


async def test_another_replica_stops_serving_the_old_version_within_the_poll(
    store: ResultStore,
) -> None:
    rid = unique_id("replica")
    prefix = f"u{uuid.uuid4().hex[:8]}"
    key = f"{prefix}:results:{rid}"
    async with (
        private_redis() as server,
        aioredis.Redis.from_url(server.url) as observer,
        replica(store, server, prefix) as reader,
    ):
        async with replica(store, server, prefix) as writer:
            await writer.put(rid, {"n": 1})
            old_entry = await observer.get(key)
            assert isinstance(old_entry, bytes)
            assert version_of((await reader.get(rid)).found) == 1
            await read_until_l1_holds(reader, rid)

            server.freeze()
            try:
                await writer.put(rid, {"n": 2})
                acknowledged = time.monotonic()
            finally:
                # The writer goes away before Redis answers again: it cannot repair.
                closing = asyncio.ensure_future(writer.aclose())
                await asyncio.sleep(0.3)
                server.thaw()
                await closing
        await observer.set(key, old_entry)  # the write never reached Redis

        # Redis holds version 1 and no notice was published; the reader's L1 would hold
        # version 1 for another minute: only the note can tell it.
        while version_of((await reader.get(rid)).found) != 2:
            assert time.monotonic() - acknowledged < UNSYNCED_POLL + 1.0, "stale too long"
            await asyncio.sleep(0.02)
        stale_for = time.monotonic() - acknowledged
        for _ in range(20):
            assert version_of((await reader.get(rid)).found) == 2, "the old version came back"
            await asyncio.sleep(0.02)
        await wait_until_repaired(store, observer, key, rid, 2)
        assert version_of((await reader.get(rid)).found) == 2
    print(f"\nthe other replica served version 1 for {stale_for:.2f} s after the write")


async def test_without_the_notes_redis_is_not_trusted(pg_url: str) -> None:
    """A process that cannot read the notes when it starts reads from the store."""
    rid = unique_id("unknown")
    prefix = f"u{uuid.uuid4().hex[:8]}"
    async with private_redis() as server, ConnectionPool(pg_url) as pool:
        store = ResultStore(pool)
        async with replica(store, server, prefix) as writer:
            await writer.put(rid, {"n": 1})
        await store.put(rid, {"n": 2})  # behind the cache's back: Redis holds version 1

        class NotesUnreadable(ResultStore):
            async def unsynced(self, cache: str, limit: int) -> tuple[tuple[str, int], ...]:
                from service.errors import DatabaseUnavailable

                raise DatabaseUnavailable("the notes cannot be read")

        async with replica(NotesUnreadable(pool), server, prefix) as blind:
            read = await blind.get(rid)
            assert read.source == "database"
            assert version_of(read.found) == 2


async def test_too_many_notes_empty_the_namespace_once(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(result_cache_module, "MAX_UNSYNCED", 2)
    prefix = f"u{uuid.uuid4().hex[:8]}"
    rids = [unique_id("many") for _ in range(3)]
    async with private_redis() as server, aioredis.Redis.from_url(server.url) as observer:
        async with replica(store, server, prefix) as writer:
            for rid in rids:
                await writer.put(rid, {"n": 1})
        for rid in rids:
            await store.put(rid, {"n": 2})
            await store.note_unsynced(namespace(prefix), rid, 2)
        bystander = f"{prefix}:results:{unique_id('bystander')}"
        await observer.set(bystander, b"1 x")

        async with replica(store, server, prefix) as cache:
            for rid in rids:
                assert version_of((await cache.get(rid)).found) == 2
            started = time.monotonic()
            while await observer.exists(bystander) or any(
                n[0] in rids for n in await store.unsynced(namespace(prefix), 1000)
            ):
                assert time.monotonic() - started < 10, "the namespace was not emptied"
                await asyncio.sleep(0.05)
            for rid in rids:
                assert version_of((await cache.get(rid)).found) == 2


async def test_a_read_of_a_frozen_redis_waits_for_one_timeout_not_two(
    store: ResultStore,
) -> None:
    rid = unique_id("once")
    await store.put(rid, {"n": 1})
    prefix = f"u{uuid.uuid4().hex[:8]}"
    async with private_redis() as server, replica(store, server, prefix) as cache:
        server.freeze()
        try:
            started = time.monotonic()
            read = await cache.get(rid)
            elapsed = time.monotonic() - started
        finally:
            server.thaw()
    assert version_of(read.found) == 1
    assert read.source == "database"
    assert elapsed < 1.8 * TIMEOUT, f"{elapsed:.2f} s: the fill waited for a second timeout"


async def test_notes_of_another_cache_namespace_are_left_alone(store: ResultStore) -> None:
    """Deployments that share the database but not the cache (another prefix) neither
    distrust their cache for each other's notes nor repair each other's entries."""
    rid = unique_id("apart")
    mine, theirs = f"u{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:8]}"
    async with private_redis() as server, aioredis.Redis.from_url(server.url) as observer:
        async with replica(store, server, mine) as writer:
            await writer.put(rid, {"n": 1})
        await store.note_unsynced(namespace(theirs), rid, 5)
        try:
            async with replica(store, server, mine) as cache:
                assert cache.stats().unsynced == 0
                first = await cache.get(rid)
                assert first.source == "shared", "distrusted for another namespace's note"
                assert (await cache.get(rid)).source == "l1"
                await asyncio.sleep(UNSYNCED_POLL + 0.5)
                assert (rid, 5) in await store.unsynced(namespace(theirs), 1000)
            assert await observer.get(f"{theirs}:results:{rid}") is None
        finally:
            await store.forget_unsynced(namespace(theirs), rid, 5)
