"""A cached result's life: refreshed before it expires, jittered, served stale on error.

Against the real PostgreSQL and Redis; the outage test stops a private PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from service.cache.backends import RedisBackend
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.result_cache import L1, NAMESPACE, TTL_JITTER, ResultCache, ResultCacheStats
from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.model import StoredResult
from tests.helpers import ClientFactory, RawRedis, forget_prefix, raw_redis, unique_id
from tests.support.private_postgres import private_postgres


def counting(store: ResultStore) -> list[str]:
    """Every query ``store`` runs, by operation, from now on."""
    queries: list[str] = []
    store.on_query = lambda operation, seconds: queries.append(operation)
    return queries


async def hammer(results: ResultCache, analysis_id: str, seconds: float) -> list[str]:
    """Eight readers reading ``analysis_id`` for ``seconds``: where each read was answered."""
    sources: list[str] = []
    deadline = time.monotonic() + seconds

    async def reader() -> None:
        while time.monotonic() < deadline:
            read = await results.get(analysis_id)
            sources.append(read.source)
            await asyncio.sleep(0.002)

    await asyncio.gather(*(reader() for _ in range(8)))
    return sources


async def settled(results: ResultCache, queries: list[str]) -> ResultCacheStats:
    """The cache's statistics once a refresh still under way when the readers stopped
    (its query run, its shared entry not yet written) has finished, or after 2 s."""
    deadline = time.monotonic() + 2.0
    while results.stats().refreshes < len(queries) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return results.stats()


@pytest.mark.parametrize("with_l1", [True, False], ids=["l1", "no-l1"])
async def test_a_hot_key_never_misses_across_its_ttl(
    pg_store: ResultStore, redis_url: str, prefix: str, with_l1: bool
) -> None:
    """Under constant reads, across several TTLs: not one read waits on the database,
    and the database sees one query per refresh, nothing more."""
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix)
    l1: L1 | None = LocalCache(1 << 20) if with_l1 else None
    rid = unique_id("hot")
    async with ResultCache(manager, pg_store, ttl=2.0, l1=l1, l1_ttl=0.2) as results:
        await results.put(rid, {"hot": True})
        queries = counting(pg_store)
        sources = await hammer(results, rid, 5.0)
        stats = await settled(results, queries)
    await manager.aclose()

    assert "database" not in sources, "a read waited on the database"
    assert stats.loads == 0
    # Fresh for 1.8-2 s (jitter), refreshed in its last 0.4 s: two or three times in 5 s.
    assert 2 <= stats.refreshes <= 4, stats
    assert queries == ["read"] * stats.refreshes


async def test_ttls_are_jittered(pg_store: ResultStore, redis_url: str, prefix: str) -> None:
    """Results written together do not all expire together."""
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix)
    async with ResultCache(manager, pg_store, ttl=1000.0) as results:
        ids = [unique_id("jit") for _ in range(20)]
        for rid in ids:
            await results.put(rid, {"a": 1})
        async with raw_redis(redis_url) as raw:
            ttls = [await raw.pttl(f"{prefix}:{NAMESPACE}:{rid}") for rid in ids]
    await manager.aclose()
    assert all(1000_000 * (1 - TTL_JITTER) - 5000 <= ttl <= 1000_000 for ttl in ttls), ttls
    assert max(ttls) - min(ttls) > 5000, ttls


async def test_an_entry_outlives_its_freshness_only_with_stale_if_error(
    pg_store: ResultStore, redis_url: str, prefix: str
) -> None:
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix)
    client = RawRedis(redis_url)
    for stale_if_error, kept in ((0.0, 100_000), (50.0, 150_000)):
        async with ResultCache(manager, pg_store, ttl=100.0, stale_if_error=stale_if_error) as rc:
            rid = unique_id("keep")
            await rc.put(rid, {"a": 1})
            ttl = await client.pttl(f"{prefix}:{NAMESPACE}:{rid}")
            assert kept - 100_000 * TTL_JITTER - 1000 <= ttl <= kept, (stale_if_error, ttl)
    await manager.aclose()
    await client.aclose()


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_database_outage_is_bridged_by_stale_entries(
    make_client: ClientFactory, redis_url: str, prefix: str
) -> None:
    """With STALE_IF_ERROR, an expired entry is served while the database is down, and
    says so; without, the same read is a 503."""
    async with asyncio.timeout(60), private_postgres() as cluster:
        async with ConnectionPool(cluster.url) as pool:
            await upgrade(pool)
        for stale_if_error in (30, 0):
            settings = {
                "database_url": cluster.url,
                "redis_url": redis_url,
                "cache_prefix": f"{prefix}{stale_if_error}",
                "result_ttl": 1,
                "l1_ttl": 0.1,
                "db_connect_timeout": 1.0,
                "stale_if_error": stale_if_error,
            }
            async with make_client(**settings) as client:
                rid = unique_id("outage")
                assert (await client.put(f"/results/{rid}", json={"kept": 1})).status_code == 201
                await cluster.stop()
                try:
                    await asyncio.sleep(1.2)  # past the TTL, jitter and the L1 TTL
                    answer = await client.get(f"/results/{rid}")
                finally:
                    await cluster.start()
                await forget_prefix(f"{prefix}{stale_if_error}")
            if stale_if_error:
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"kept": 1}
                assert answer.headers["cache-status"] == (
                    "service; fwd=stale; detail=stale-if-error"
                )
                assert answer.headers["x-cache"] == "STALE"
                assert "stale-if-error=30" in answer.headers["cache-control"]
            else:
                assert answer.status_code == 503, answer.text


async def test_a_refresh_never_puts_back_an_older_version(
    pg_store: ResultStore, redis_url: str, prefix: str
) -> None:
    """A refresh reads version N; a write of N+1 lands before the refresh writes: the
    shared tier keeps N+1 (same compare-and-set as every fill)."""
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix)
    async with ResultCache(manager, pg_store, ttl=100.0) as results:
        rid = unique_id("race")
        first = await results.put(rid, {"v": 1})
        await results.put(rid, {"v": 2})
        # What a refresh that read version 1 before the write would put back:
        assert await results._fill(first.result) is False
        read = await results.get(rid)
    await manager.aclose()
    assert isinstance(read.found, StoredResult)
    assert read.found.document() == {"v": 2}
