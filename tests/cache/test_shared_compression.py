"""Shared entries hold the body in zstd, made once for every replica.

Against the real Redis and PostgreSQL: what Redis stores, what a second replica that
never saw a result sends on its first read, and entries that cannot be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import zstandard

from service.cache.backends import MemoryBackend, RedisBackend
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.result_cache import NAMESPACE, CachedRead, ResultCache, SharedZstd
from service.core.codings import ZSTD, compress
from service.db.result_store import ResultStore
from service.errors import InvalidArgument
from service.model import StoredResult
from tests.helpers import ClientFactory, RawRedis, forget_prefix, raw_redis, unique_id


def analysis(size: int) -> dict[str, object]:
    """A result document of about ``size`` bytes of JSON, shaped like a real one."""
    rows: list[dict[str, object]] = []
    doc: dict[str, object] = {"model": {"name": "gbm", "seed": 7}, "rows": rows}
    while len(orjson.dumps(doc)) < size:
        n = len(rows)
        rows.append({"id": n, "label": f"segment-{n % 17}", "score": (n * 7919 % 1000) / 1000})
    return doc


async def memory_usage(redis_url: str, key: str) -> int:
    async with raw_redis(redis_url) as raw:
        return await raw.memory_usage(key)


@asynccontextmanager
async def replicas(
    store: ResultStore, redis_url: str, prefix: str, zstd_a: SharedZstd, zstd_b: SharedZstd
) -> AsyncIterator[tuple[ResultCache, ResultCache]]:
    """Two replicas on one Redis and one store, each with its own L1."""
    managers = [CacheManager(RedisBackend(redis_url), prefix=prefix) for _ in "ab"]
    try:
        async with (
            ResultCache(managers[0], store, l1=LocalCache(1 << 24), zstd=zstd_a) as a,
            ResultCache(managers[1], store, l1=LocalCache(1 << 24), zstd=zstd_b) as b,
        ):
            yield a, b
    finally:
        for manager in managers:
            await manager.aclose()


async def first_kept_read(results: ResultCache, analysis_id: str) -> CachedRead:
    """The first read of ``analysis_id`` that L1 kept. A read whose flight the writer's
    notice ended (it may arrive while the read runs) fills nothing: read again."""
    for _ in range(50):
        read = await results.get(analysis_id)
        if read.ready is not None:
            return read
        await asyncio.sleep(0.02)
    raise AssertionError("no read was kept in L1")


async def test_redis_holds_a_quarter_of_the_bytes_or_less(
    pg_store: ResultStore, redis_url: str, prefix: str
) -> None:
    """A 22 KB result: MEMORY USAGE of its key, stored as is and compressed."""
    used: dict[str, int] = {}
    for name, zstd in (("plain", None), ("zstd", SharedZstd())):
        manager = CacheManager(RedisBackend(redis_url), prefix=f"{prefix}{name}")
        async with ResultCache(manager, pg_store, zstd=zstd) as results:
            rid = unique_id("mem")
            await results.put(rid, analysis(22_000))
            used[name] = await memory_usage(redis_url, f"{prefix}{name}:{NAMESPACE}:{rid}")
        await manager.aclose()
        await forget_prefix(f"{prefix}{name}")
    assert used["plain"] > 22_000, used
    assert used["zstd"] * 4 <= used["plain"], used


async def test_a_second_replica_sends_the_stored_zstd_bytes_at_once(
    pg_store: ResultStore, redis_url: str, prefix: str
) -> None:
    """Replica B never saw the result: its first read has the zstd representation, the
    very frame replica A stored, and the identity body, without compressing."""
    rid = unique_id("rep")
    async with replicas(pg_store, redis_url, prefix, SharedZstd(), SharedZstd()) as (a, b):
        written = await a.put(rid, analysis(22_000))
        read = await first_kept_read(b, rid)
        assert read.source == "shared"
        assert read.ready is not None
        representation = read.ready.get(ZSTD)
        assert representation is not None, "the zstd bytes came with the entry"
        assert representation.etag == '"1-zstd"'
        assert representation.body == compress(ZSTD, SharedZstd().level, written.body)
        assert zstandard.ZstdDecompressor().decompress(representation.body) == written.body
        assert read.found == StoredResult(written.meta, written.body)
        # The SDK's own reads decompress too.
        assert await b.get_analysis_result(rid) == orjson.loads(written.body)


async def test_a_replica_at_another_level_makes_its_own_zstd(
    pg_store: ResultStore, redis_url: str, prefix: str
) -> None:
    """One tag, one byte sequence: bytes stored at level 3 are not passed off as level 9's."""
    rid = unique_id("lvl")
    three, nine = SharedZstd(level=3), SharedZstd(level=9)
    async with replicas(pg_store, redis_url, prefix, three, nine) as (a, b):
        await a.put(rid, analysis(22_000))
        read = await first_kept_read(b, rid)
        assert read.source == "shared"
        assert read.ready is not None
        assert read.ready.get(ZSTD) is None
        made = await read.ready.make(ZSTD, 9, 500)
        assert made.body == compress(ZSTD, 9, read.ready.stored.body)


async def test_small_or_incompressible_bodies_are_stored_as_they_are(
    pg_store: ResultStore, redis_url: str, prefix: str
) -> None:
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix)
    client = RawRedis(redis_url)
    try:
        async with ResultCache(manager, pg_store, zstd=SharedZstd(minimum_size=500)) as results:
            small = unique_id("small")
            await results.put(small, {"a": 1})
            raw = await client.get(f"{prefix}:{NAMESPACE}:{small}")
            assert isinstance(raw, bytes)
            assert raw.endswith(b'\n{"a": 1}'), raw
            assert (await results.get(small)).found.document() == {"a": 1}  # type: ignore[union-attr]
    finally:
        await client.aclose()
        await manager.aclose()


@pytest.mark.parametrize(
    "junk",
    [
        b"1 R 0 0 99999999999999 z3\nnot zstd at all",
        b"1 R 0 0 99999999999999 z3\n" + compress(ZSTD, 3, b"{}")[:-3],
        b"1 R 0 0 99999999999999 q3\n{}",
    ],
    ids=["not-zstd", "truncated", "unknown-coding"],
)
async def test_an_entry_that_cannot_be_read_is_a_miss(
    pg_store: ResultStore, redis_url: str, prefix: str, junk: bytes
) -> None:
    """A corrupt compressed entry is never served: the read goes to the database."""
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix)
    client = RawRedis(redis_url)
    rid = unique_id("junk")
    try:
        async with ResultCache(manager, pg_store) as results:
            await pg_store.put(rid, {"real": True})
            await client.set(f"{prefix}:{NAMESPACE}:{rid}", junk)
            read = await results.get(rid)
            assert read.source == "database"
            assert isinstance(read.found, StoredResult)
            assert read.found.document() == {"real": True}
    finally:
        await client.aclose()
        await manager.aclose()


async def test_a_second_replica_answers_zstd_from_its_first_request(
    make_client: ClientFactory, pg_url: str, redis_url: str, prefix: str
) -> None:
    """Over HTTP: replica A takes the write, replica B's first browser GET is zstd, the
    bytes A stored, under the tag A would send."""
    settings = {"database_url": pg_url, "redis_url": redis_url, "cache_prefix": prefix}
    browser = {"accept-encoding": "gzip, deflate, br, zstd"}
    rid = unique_id("http")
    async with make_client(**settings) as a, make_client(**settings) as b:
        assert (await a.put(f"/results/{rid}", json=analysis(22_000))).status_code == 201
        first_b = await b.get(f"/results/{rid}", headers=browser)
        first_a = await a.get(f"/results/{rid}", headers=browser)
    for answer in (first_a, first_b):
        assert answer.status_code == 200
        assert answer.headers["content-encoding"] == "zstd"
        assert answer.headers["etag"] == '"1-zstd"'
    # The same frame: the same length on the wire, the same document decoded.
    assert first_a.headers["content-length"] == first_b.headers["content-length"]
    assert first_a.content == first_b.content


async def test_a_read_from_the_database_keeps_the_frame_it_stored(
    pg_store: ResultStore, redis_url: str, prefix: str
) -> None:
    """The replica that fills the shared entry compresses the body once, for Redis and
    for its own zstd representation alike."""
    manager = CacheManager(RedisBackend(redis_url), prefix=prefix)
    rid = unique_id("fill")
    try:
        async with ResultCache(manager, pg_store, l1=LocalCache(1 << 24)) as results:
            written = await pg_store.put(rid, analysis(22_000))  # not through the cache
            read = await results.get(rid)
            assert read.source == "database"
            assert read.ready is not None
            representation = read.ready.get(ZSTD)
            assert representation is not None
            assert representation.body == compress(ZSTD, SharedZstd().level, written.body)
    finally:
        await manager.aclose()


async def test_a_cache_with_no_room_compresses_nothing(
    pg_store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache turned off (an in-process shared tier of size 0, no L1): every read and
    write goes to the database as before, and no entry is compressed for a tier that
    cannot keep it."""
    calls: list[int] = []

    def counted(coding: str, level: int, body: bytes) -> bytes:
        calls.append(len(body))
        return compress(coding, level, body)

    monkeypatch.setattr("service.cache.result_cache.compress", counted)
    rid = unique_id("off")
    async with ResultCache(CacheManager(MemoryBackend(0)), pg_store) as results:
        assert results.zstd is not None  # compression is set, and would have run
        written = await results.put(rid, analysis(22_000))
        for _ in range(3):
            read = await results.get(rid)
            assert read.source == "database"
            assert isinstance(read.found, StoredResult)
            assert read.found.body == written.result.body
        rewritten = await results.put(rid, {"v": 2})
        assert (await results.get(rid)).found == rewritten.result
    assert calls == []


def test_shared_compression_and_stale_serving_refuse_bad_arguments() -> None:
    with pytest.raises(InvalidArgument, match="zstd level"):
        SharedZstd(level=22)
    with pytest.raises(InvalidArgument):
        SharedZstd(minimum_size=-1)
    with pytest.raises(InvalidArgument, match="stale_if_error"):
        ResultCache(stale_if_error=-1)
