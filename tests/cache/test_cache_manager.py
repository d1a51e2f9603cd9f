"""CacheManager against the real Redis (TEST_REDIS_URL), and over process memory.

Every test uses its own key prefix and removes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from service.cache.backends import MemoryBackend, RedisBackend, lost_connection, uses_hiredis
from service.cache.manager import CacheManager
from service.errors import CacheSerializationError, ClosedError, InvalidCacheArgument
from tests.helpers import REDIS_URL, RawRedis, raw_redis


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "memory"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[CacheManager]:
    prefix = f"test{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        manager = CacheManager(RedisBackend(REDIS_URL), prefix=prefix)
    else:
        manager = CacheManager(MemoryBackend(1024 * 1024), prefix=prefix)
    yield manager
    if isinstance(manager.backend, RedisBackend):
        await manager.backend.delete_prefix(f"{prefix}:")
    await manager.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[RawRedis]:
    async with raw_redis(redis_url) as raw:
        yield raw


async def test_round_trip_of_what_the_api_stores(cache: CacheManager) -> None:
    value = {"score": 0.93, "labels": ["a", "b"], "nested": {"n": None, "t": True}, "big": 2**62}
    await cache.set("run-42", value, namespace="results")
    assert await cache.get("run-42", namespace="results") == value
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await cache.set("when", {"at": when, "id": uuid.UUID(int=1)})
    assert await cache.get("when") == {
        "at": "2026-01-02T03:04:05+00:00",
        "id": "00000000-0000-0000-0000-000000000001",
    }
    assert await cache.get("absent", namespace="results") is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.errors) == (2, 1, 0)


async def test_keys_live_under_prefix_and_namespace(redis_client: RawRedis) -> None:
    prefix = f"test{uuid.uuid4().hex[:10]}"
    async with CacheManager(RedisBackend(REDIS_URL), prefix=prefix) as cache:
        await cache.set("k:with:colons", {"v": 1}, namespace="results", ttl=60)
        assert await redis_client.get(f"{prefix}:results:k:with:colons") == b'{"v":1}'
        assert await cache.invalidate_namespace("results") == 1


async def test_ttl_is_honoured(cache: CacheManager, redis_client: RawRedis) -> None:
    await cache.set("short", {"v": 1}, ttl=0.3)
    await cache.set("default", {"v": 2})
    assert await cache.get("short") == {"v": 1}
    if isinstance(cache.backend, RedisBackend):
        ttl_ms = await redis_client.pttl(f"{cache.prefix}:default:short")
        assert 0 < ttl_ms <= 300
        assert await redis_client.ttl(f"{cache.prefix}:default:default") == -1  # no default
    await asyncio.sleep(0.4)
    assert await cache.get("short") is None
    assert await cache.get("default") == {"v": 2}


async def test_default_ttl_applies(redis_client: RawRedis) -> None:
    prefix = f"test{uuid.uuid4().hex[:10]}"
    async with CacheManager(RedisBackend(REDIS_URL), prefix=prefix, default_ttl=3600) as cache:
        await cache.set("k", {"v": 1}, namespace="results")
        assert 3590 <= await redis_client.ttl(f"{prefix}:results:k") <= 3600
        await cache.delete("k", namespace="results")


async def test_namespaces_are_isolated_and_invalidated_alone(cache: CacheManager) -> None:
    await cache.set_many({f"k{n}": {"n": n} for n in range(1200)}, namespace="a")
    await cache.set("k1", {"other": True}, namespace="b")
    assert await cache.get("k1", namespace="a") == {"n": 1}
    assert await cache.get("k1", namespace="b") == {"other": True}
    removed = await cache.invalidate_namespace("a")
    assert removed == 1200
    assert await cache.get("k1", namespace="a") is None
    assert await cache.get("k1", namespace="b") == {"other": True}
    assert await cache.invalidate_namespace("a") == 0


async def test_get_many_set_many_and_delete(cache: CacheManager) -> None:
    await cache.set_many({"x": 1, "y": [2], "z": {"3": 3}}, namespace="m")
    assert await cache.get_many(["x", "y", "nope", "z"], namespace="m") == {
        "x": 1,
        "y": [2],
        "z": {"3": 3},
    }
    assert await cache.get_many([], namespace="m") == {}
    assert await cache.delete("x", namespace="m") is True
    assert await cache.delete("x", namespace="m") is False
    assert await cache.get("x", namespace="m") is None


class SlowLoader:
    """A loader that takes 0.05 s and counts its calls; each result names its call."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict[str, int]:
        self.calls += 1
        await asyncio.sleep(0.05)
        return {"loaded": self.calls}


async def test_get_or_set_loads_once_for_concurrent_misses(cache: CacheManager) -> None:
    loader = SlowLoader()

    results = await asyncio.gather(
        *(cache.get_or_set("cold", loader, namespace="sf") for _ in range(200))
    )
    assert loader.calls == 1
    assert results == [{"loaded": 1}] * 200
    assert await cache.get_or_set("cold", loader, namespace="sf") == {"loaded": 1}
    assert loader.calls == 1


async def test_get_or_set_shares_a_loader_error_and_caches_nothing(cache: CacheManager) -> None:
    async def broken() -> dict[str, int]:
        await asyncio.sleep(0.01)
        raise LookupError("source down")

    outcomes = await asyncio.gather(
        *(cache.get_or_set("k", broken) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, LookupError) for o in outcomes)
    assert await cache.get("k") is None


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        ("x" * 10_000, "ns"),
        ("", "ns"),
        ("bad\nkey", "ns"),
        ("k", "a:b"),
        ("k", "*"),
        ("k", "a?"),
        ("k", ""),
        ("k", "n" * 65),
    ],
)
async def test_bad_keys_and_namespaces_are_refused(
    cache: CacheManager, key: str, namespace: str
) -> None:
    with pytest.raises(InvalidCacheArgument):
        await cache.set(key, {"v": 1}, namespace=namespace)
    with pytest.raises(InvalidCacheArgument):
        await cache.get(key, namespace=namespace)


@pytest.mark.parametrize("ttl", [-1, 0, float("nan"), float("inf")])
async def test_bad_ttls_are_refused(cache: CacheManager, ttl: float) -> None:
    with pytest.raises(InvalidCacheArgument, match="ttl"):
        await cache.set("k", {"v": 1}, ttl=ttl)
    assert await cache.get("k") is None


async def test_values_that_cannot_be_serialized_raise_at_set(cache: CacheManager) -> None:
    with pytest.raises(CacheSerializationError):
        await cache.set("k", {"amount": Decimal("1.10")})
    with pytest.raises(CacheSerializationError):
        await cache.set_many({"a": 1, "b": object()})
    with pytest.raises(InvalidCacheArgument, match="None"):
        await cache.set("k", None)
    assert await cache.get_many(["k", "a", "b"]) == {}


async def test_closed_manager_raises_and_aclose_is_idempotent() -> None:
    cache = CacheManager(RedisBackend(REDIS_URL), prefix=f"test{uuid.uuid4().hex[:10]}")
    await cache.aclose()
    await cache.aclose()
    with pytest.raises(ClosedError):
        await cache.get("k")


def test_hiredis_parses_replies() -> None:
    assert uses_hiredis()


async def test_memory_backend_evicts_least_recently_used_by_bytes() -> None:
    backend = MemoryBackend(max_bytes=3 * (100 + 10 + 1))  # three entries of key 1, value 10
    for key in "abc":
        await backend.set(key, b"x" * 10, None)
    assert await backend.get("a") == b"x" * 10  # a is now the most recent
    await backend.set("d", b"y" * 10, None)
    assert await backend.get("b") is None  # the least recently used went
    assert [await backend.get(k) is not None for k in "acd"] == [True, True, True]
    assert backend.evictions == 1
    assert backend.size_bytes <= backend.max_bytes
    await backend.set("huge", b"z" * 10_000, None)
    assert await backend.get("huge") is None  # larger than the budget: not stored
    assert len(backend) == 3


async def test_memory_backend_expires_entries() -> None:
    now = [100.0]
    backend = MemoryBackend(max_bytes=10_000, clock=lambda: now[0])
    await backend.set("k", b"v", ttl=5)
    await backend.set("forever", b"v", ttl=None)
    now[0] += 4.9
    assert await backend.get("k") == b"v"
    now[0] += 0.2
    assert await backend.get("k") is None
    assert await backend.get("forever") == b"v"
    assert backend.size_bytes == len("forever") + 1 + 100  # only "forever" is counted now


async def test_the_settings_pick_the_backend() -> None:
    from service.config import Settings
    from service.wiring import cache_manager

    memory = cache_manager(Settings(database_url="sqlite:///x.db"))
    assert memory.backend.name == "memory"
    assert memory.default_ttl == 3600
    await memory.aclose()
    redis_cache = cache_manager(
        Settings(database_url="sqlite:///x.db", redis_url=REDIS_URL, cache_prefix="p1")
    )
    assert redis_cache.backend.name == "redis"
    assert redis_cache.prefix == "p1"
    await redis_cache.aclose()


async def test_a_cancelled_trial_call_does_not_wedge_the_breaker(redis_url: str) -> None:
    from service.cache.breaker import CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=lambda: now[0])
    prefix = f"test{uuid.uuid4().hex[:10]}"
    async with CacheManager(RedisBackend(redis_url), prefix=prefix, breaker=breaker) as cache:
        breaker.record_failure()  # as after an outage
        now[0] = 1.0  # cooldown over: the next call is the trial
        trial = asyncio.ensure_future(cache.get("k"))
        await asyncio.sleep(0)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        await cache.set("k", {"v": 1})  # the next call is allowed through as a new trial
        assert await cache.get("k") == {"v": 1}
        assert cache.stats().breaker == "closed"
        await cache.delete("k")


@pytest.mark.one_node
async def test_new_redis_connections_do_not_read_package_metadata(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """redis-py reads its own version from the installed package's metadata (disk I/O on
    the event loop) for every new connection unless it is handed one: a burst of misses
    on a fresh process opened fifty connections and stalled the loop for 70-135 ms."""
    from importlib import metadata

    reads = 0
    real = metadata.version

    def counting(name: str) -> str:
        nonlocal reads
        reads += 1
        return real(name)

    monkeypatch.setattr(metadata, "version", counting)  # what redis.utils calls
    backend = RedisBackend(redis_url, max_connections=60)
    try:
        await asyncio.gather(*(backend.get(f"svc-test:{uuid.uuid4().hex}") for _ in range(50)))
        during_the_burst = reads
        observer = RawRedis(redis_url)
        try:
            clients = await observer.client.client_list()
        finally:
            await observer.aclose()
        assert len(clients) >= 10, "the burst opened new connections"
    finally:
        await backend.aclose()
    assert during_the_burst == 0


@pytest.mark.one_node
async def test_a_connection_lost_under_redis_py_is_an_outage_a_bug_of_ours_is_not(
    redis_url: str,
) -> None:
    """redis-py may surface a connection closed mid-write as an AttributeError from its
    transport (its issue 4287; seen with a cluster master killed under load): that is
    an outage, served without the cache. The same exception from a backend's own code
    is a bug, and propagates."""
    backend = RedisBackend(redis_url)
    try:
        connection = await backend.client.connection_pool.get_connection()
        writer = connection._writer
        try:
            # What a close under a command in flight leaves for the write that follows:
            # the step of redis-py's send that raised when the cluster master died.
            connection._writer = None
            with pytest.raises(AttributeError) as lost:
                await connection._send_packed_command([b"PING"])
        finally:
            connection._writer = writer
            await connection.disconnect()
        assert lost_connection(lost.value)
    finally:
        await backend.aclose()

    class Broken(MemoryBackend):
        async def get(self, key: str) -> bytes | None:
            raise AttributeError("a bug of ours")

    manager = CacheManager(Broken(1 << 20), prefix=f"t{uuid.uuid4().hex[:8]}")
    with pytest.raises(AttributeError, match="a bug of ours"):
        await manager.get("k")
    assert not lost_connection(AttributeError("a bug of ours"))


class _FirstReadLate(MemoryBackend):
    """The in-process backend, whose first read is answered late (a slow Redis reply):
    it reads the entry at once and hands it back 0.2 s later."""

    late = True

    async def get(self, key: str) -> bytes | None:
        found = await super().get(key)
        if self.late:
            self.late = False
            await asyncio.sleep(0.2)
        return found


async def test_a_miss_answered_after_the_load_ended_takes_the_load_s_value() -> None:
    """A caller whose read began before its key's load ended, and whose miss came back
    after, shares that load: the loader runs once (CI saw it run twice on a slow
    cluster)."""
    cache = CacheManager(_FirstReadLate(1 << 20), prefix="late")
    loader = SlowLoader()

    late = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.sleep(0)  # its read has begun (and will miss)
    assert await cache.get_or_set("k", loader) == {"loaded": 1}
    assert await late == {"loaded": 1}
    assert loader.calls == 1
    assert not cache._asking  # nothing kept once every caller has decided
    assert not cache._landed
    await cache.aclose()
