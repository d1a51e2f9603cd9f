"""ResultCache against the real Redis (TEST_REDIS_URL) and the real PostgreSQL.

Each test uses its own key prefix and removes its keys afterwards. Database queries are
counted with a SQLAlchemy event on every Engine, so "one query" means one statement
actually sent to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.pool import Pool

from service.cache.backends import MemoryBackend, RedisBackend
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.ready import ReadyResult
from service.cache.result_cache import NAMESPACE, TTL_JITTER, ResultCache
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.errors import ConfigurationError, InvalidAnalysisId, InvalidCacheArgument
from service.model import Absent, StoredResult
from tests.helpers import (
    ClientFactory,
    forget_prefix,
    raw_redis,
    read_until_l1_holds,
    unique_id,
    unique_prefix,
)


@contextmanager
def counted_queries() -> Iterator[list[str]]:
    """Every SQL statement any pool sends while the block runs: through SQLAlchemy (its
    cursor event) or straight on the asyncpg connection (asyncpg's query logger, which
    sees what the store runs on the driver; SQLAlchemy's prepared statements bypass it)."""
    statements: list[str] = []
    drivers: list[Any] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def logged(record: Any) -> None:
        statements.append(record.query)

    def watch(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if driver not in drivers:
            driver.add_query_logger(logged)
            drivers.append(driver)

    event.listen(Engine, "before_cursor_execute", count)
    event.listen(Pool, "checkout", watch)
    try:
        yield statements
    finally:
        event.remove(Pool, "checkout", watch)
        event.remove(Engine, "before_cursor_execute", count)
        for driver in drivers:
            driver.remove_query_logger(logged)


def result_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("SELECT") and "results" in s]


@pytest.fixture
async def pg_store(pool: ConnectionPool) -> ResultStore:
    return ResultStore(pool)


@pytest.fixture(params=["redis", "memory", "memory-l1"])
async def results(
    request: pytest.FixtureRequest, pg_store: ResultStore, redis_url: str
) -> AsyncIterator[ResultCache]:
    """A ResultCache as the service builds it (L1 in front of Redis, or of process
    memory), and as the SDK's default makes it (memory alone). Each variant removes the
    keys of its prefix from the shared Redis afterwards, so each needs Redis."""
    prefix = unique_prefix()
    if request.param == "redis":
        cache = ResultCache(
            CacheManager(RedisBackend(redis_url), prefix=prefix, default_ttl=3600),
            pg_store,
            l1=LocalCache(8 * 1024 * 1024),
        )
    else:
        l1 = LocalCache[ReadyResult | Absent](8 << 20) if request.param == "memory-l1" else None
        memory = CacheManager(MemoryBackend(8 * 1024 * 1024), prefix=prefix)
        cache = ResultCache(memory, pg_store, l1=l1)
    async with cache:
        yield cache
        await cache.cache.aclose()
    await forget_prefix(prefix)


async def test_the_specification_interface_round_trips(redis_url: str) -> None:
    prefix = unique_prefix()
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix, default_ttl=1800)
    try:
        async with ResultCache(manager) as results:
            document = {"score": 0.93, "labels": ["a"], "big": 2**62, "nested": {"x": None}}
            assert await results.get_analysis_result("run-1") is None
            assert await results.cache_analysis_result("run-1", document) is True
            assert await results.get_analysis_result("run-1") == document
        async with raw_redis(redis_url) as raw:
            ttl = await raw.ttl(f"{prefix}:{NAMESPACE}:run-1")
        # The result TTL, less up to TTL_JITTER of it.
        assert 1800 * (1 - TTL_JITTER) - 5 <= ttl <= 1800, "the entry's TTL is the result TTL"
    finally:
        await manager.aclose()
        await forget_prefix(prefix)


async def test_a_higher_cached_version_is_never_replaced_by_a_lower_one(
    results: ResultCache,
) -> None:
    rid = unique_id()
    assert await results.cache_analysis_result(rid, {"v": 2}, version=2) is True
    assert await results.cache_analysis_result(rid, {"v": 1}, version=1) is False
    assert await results.cache_analysis_result(rid, {"v": 0}) is False, "unversioned is oldest"
    assert await results.get_analysis_result(rid) == {"v": 2}
    assert await results.cache_analysis_result(rid, {"v": 3}, version=3) is True
    assert await results.get_analysis_result(rid) == {"v": 3}


async def test_unversioned_entries_replace_each_other_and_are_not_served_as_stored(
    results: ResultCache,
) -> None:
    rid = unique_id()
    await results.cache_analysis_result(rid, {"n": 1})
    await results.cache_analysis_result(rid, {"n": 2})
    assert await results.get_analysis_result(rid) == {"n": 2}
    read = await results.get(rid)
    assert read.source == "database", "a hand-cached entry is not a stored version"
    assert read.found == Absent(rid, 0)


async def test_read_through_write_through_and_tombstones(results: ResultCache) -> None:
    rid = unique_id()
    first = await results.get(rid)
    assert (first.found, first.source) == (Absent(rid, 0), "database")
    again = await results.get(rid)
    assert again.hit, "an absent id is cached too"
    assert again.found == Absent(rid, 0)

    written = await results.put(rid, b'{"score": 1}')
    read = await results.get(rid)
    assert read.hit, "the write put its version in the cache"
    assert isinstance(read.found, StoredResult)
    assert read.found.meta.version == written.meta.version == 1
    assert read.found.document() == {"score": 1}
    assert read.found.body == written.body

    tombstone = await results.delete(rid)
    gone = await results.get(rid)
    assert gone.hit
    assert gone.found == Absent(rid, tombstone.version)
    assert tombstone.version == 2


async def test_the_cached_body_is_the_bytes_a_database_read_returns(
    results: ResultCache, pg_store: ResultStore
) -> None:
    rid = unique_id()
    await results.put(rid, b'{ "b" : 1,   "a": [1, 2] }')
    cached = (await results.get(rid)).found
    stored = await pg_store.get(rid)
    assert isinstance(cached, StoredResult)
    assert stored is not None
    assert cached.body == stored.body, "one version, one representation (strong ETag)"


async def test_bad_input_raises_precise_errors(results: ResultCache) -> None:
    with pytest.raises(InvalidAnalysisId):
        await results.get("a:b")
    with pytest.raises(InvalidAnalysisId):
        await results.cache_analysis_result("x" * 10_000, {"a": 1})
    with pytest.raises(InvalidCacheArgument):
        await results.cache_analysis_result(unique_id(), {"a": 1}, ttl=-5)
    with pytest.raises(ValueError, match="version"):
        await results.cache_analysis_result(unique_id(), {"a": 1}, version=0)
    with pytest.raises(ConfigurationError):
        await ResultCache().get(unique_id())


async def test_a_stampede_on_a_cold_key_is_one_database_query(
    results: ResultCache, pg_store: ResultStore
) -> None:
    rid = unique_id("cold")
    await pg_store.put(rid, {"hot": True})
    with counted_queries() as statements:
        reads = await asyncio.gather(*(results.get(rid) for _ in range(1000)))
    assert len(result_reads(statements)) == 1, statements
    assert {read.found.meta.version for read in reads if isinstance(read.found, StoredResult)} == {
        1
    }
    assert sum(not read.hit for read in reads) >= 1
    assert results.stats().loads == 1


async def test_reads_never_see_a_version_older_than_an_acknowledged_write(
    results: ResultCache,
) -> None:
    """Writers and readers race on one id; every read must be at least the version
    acknowledged before it began (deletes count: their tombstone has a version).

    An evictor keeps dropping the entry from both tiers (as expiry or memory pressure
    would), so reads keep going to the database and filling the cache while writes land.
    """
    rid = unique_id("race")
    acknowledged = 0
    writes_left = 2000
    stale: list[tuple[int, int]] = []
    reads = 0

    async def writer() -> None:
        nonlocal acknowledged, writes_left
        while writes_left > 0:
            writes_left -= 1
            if random.random() < 0.1:
                try:
                    version = (await results.delete(rid)).version
                except LookupError:
                    continue
            else:
                version = (await results.put(rid, {"n": writes_left})).meta.version
            acknowledged = max(acknowledged, version)

    async def reader() -> None:
        nonlocal reads
        while writes_left > 0:
            floor = acknowledged
            found = (await results.get(rid)).found
            version = found.version if isinstance(found, Absent) else found.meta.version
            reads += 1
            if version < floor:
                stale.append((floor, version))
            await asyncio.sleep(0)

    async def evictor() -> None:
        while writes_left > 0:
            await results.cache.delete(rid, NAMESPACE)
            if results.l1 is not None:
                results.l1.discard(rid)
            await asyncio.sleep(0.001)

    async with asyncio.timeout(120):
        await asyncio.gather(
            *(writer() for _ in range(4)), *(reader() for _ in range(8)), evictor()
        )
    assert reads > 1000
    assert results.stats().loads > 20, "the database path must have been raced too"
    assert stale == [], f"{len(stale)} stale reads of {reads}, e.g. {stale[:5]}"


@pytest.mark.slow
async def test_a_write_on_one_replica_reaches_the_other_within_milliseconds(
    make_client: ClientFactory, pg_url: str, redis_url: str
) -> None:
    prefix = unique_prefix()
    settings = {"database_url": pg_url, "redis_url": redis_url, "cache_prefix": prefix}
    rid = unique_id("two")
    delays: list[float] = []
    try:
        async with make_client(**settings) as a, make_client(**settings) as b:
            assert (await a.put(f"/results/{rid}", json={"n": 0})).status_code == 201
            for n in range(1, 51):
                primed = await b.get(f"/results/{rid}")  # B's L1 now holds version n
                assert primed.headers["etag"] == f'"{n}"'
                written = await a.put(f"/results/{rid}", json={"n": n})
                assert written.headers["etag"] == f'"{n + 1}"'
                started = time.perf_counter()
                while True:
                    seen = await b.get(f"/results/{rid}")
                    if seen.headers["etag"] == f'"{n + 1}"':
                        break
                    assert seen.headers["etag"] == f'"{n}"', "never older than before"
                    assert time.perf_counter() - started < 1.0, "the invalidation never came"
                    await asyncio.sleep(0.0005)
                delays.append(time.perf_counter() - started)
    finally:
        await forget_prefix(prefix)
    delays.sort()
    print(
        f"\nstaleness on the other replica: median {delays[len(delays) // 2] * 1000:.2f} ms,"
        f" max {delays[-1] * 1000:.2f} ms over {len(delays)} writes"
    )
    assert delays[-1] < 1.0


async def test_a_writer_without_l1_still_drops_the_l1_of_replicas_that_keep_one(
    pg_store: ResultStore, redis_url: str
) -> None:
    """A process that only writes (an SDK user's job, or a replica run with
    ``L1_MAX_BYTES=0``) keeps no L1 of its own, but the replicas that serve reads do:
    its acknowledged write must reach them at once, not after their L1_TTL."""
    prefix = unique_prefix()
    rid = unique_id("writer")
    writer = ResultCache(CacheManager(RedisBackend(redis_url), prefix=prefix), pg_store)
    reader = ResultCache(
        CacheManager(RedisBackend(redis_url), prefix=prefix),
        pg_store,
        l1=LocalCache(8 << 20),
        l1_ttl=60,
    )
    try:
        async with writer, reader:
            assert writer.listener is None, "a writer without L1 has nothing to drop"
            await writer.put(rid, {"n": 1})
            assert (await reader.get(rid)).source != "l1"
            await read_until_l1_holds(reader, rid)
            await writer.put(rid, {"n": 2})
            started = time.perf_counter()
            while (await reader.get(rid)).found.meta.version != 2:  # type: ignore[union-attr]
                assert time.perf_counter() - started < 1.0, "the reader kept version 1"
                await asyncio.sleep(0.001)
    finally:
        await writer.cache.aclose()
        await reader.cache.aclose()
        await forget_prefix(prefix)


async def test_the_api_says_hit_or_miss(
    make_client: ClientFactory, pg_url: str, redis_url: str
) -> None:
    prefix = unique_prefix()
    rid = unique_id()
    try:
        async with make_client(database_url=pg_url, redis_url=redis_url, cache_prefix=prefix) as c:
            missing = await c.get(f"/results/{rid}")
            assert (missing.status_code, missing.headers["x-cache"]) == (404, "MISS")
            assert (await c.get(f"/results/{rid}")).headers["x-cache"] == "HIT"
            await c.put(f"/results/{rid}", json={"a": 1})
            hit = await c.get(f"/results/{rid}")
            assert (hit.status_code, hit.headers["x-cache"], hit.json()) == (200, "HIT", {"a": 1})
            head = await c.head(f"/results/{rid}")
            assert head.headers["content-length"] == str(len(hit.content))
            fresh = await c.get(f"/results/{rid}", headers={"if-none-match": hit.headers["etag"]})
            assert fresh.status_code == 304
            assert (await c.delete(f"/results/{rid}")).status_code == 204
            gone = await c.get(f"/results/{rid}")
            assert (gone.status_code, gone.headers["x-cache"]) == (404, "HIT")
    finally:
        await forget_prefix(prefix)


async def test_a_stampede_through_http_is_one_query(
    make_client: ClientFactory, pg_url: str, redis_url: str
) -> None:
    prefix = unique_prefix()
    rid = unique_id("http-cold")
    try:
        async with make_client(database_url=pg_url, redis_url=redis_url, cache_prefix=prefix) as c:
            async with ConnectionPool(pg_url) as pool:
                await ResultStore(pool).put(rid, {"hot": 1})
            with counted_queries() as statements:
                responses = await asyncio.gather(*(c.get(f"/results/{rid}") for _ in range(1000)))
            assert {r.status_code for r in responses} == {200}
            assert len(result_reads(statements)) == 1, statements
            misses = [r for r in responses if r.headers["x-cache"] == "MISS"]
            assert len(misses) >= 1
            print(f"\n1,000 concurrent cold GETs: {len(result_reads(statements))} query")
    finally:
        await forget_prefix(prefix)
