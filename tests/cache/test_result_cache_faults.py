"""The results API over a Redis that stops, comes back empty, or freezes.

Each test runs its own ``redis-server`` (never the shared one) and the real PostgreSQL.
Without Redis every request must still succeed from PostgreSQL with the latest version;
once Redis is back, hits must resume by themselves; and a write that could not reach a
frozen Redis must never let the older entry it left there be served.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import redis.asyncio as aioredis

from service.cache import entry
from service.cache.backends import RedisBackend, leading_version
from service.cache.invalidation import InvalidationListener
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.result_cache import ResultCache
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.model import Absent, ResultMeta, StoredResult
from tests.helpers import ClientFactory, unique_id
from tests.support.private_redis import PrivateRedis, private_redis

pytestmark = pytest.mark.slow

TOKEN = "fault-test-admin-token"


def settings(pg_url: str, server: PrivateRedis, **more: object) -> dict[str, object]:
    return {
        "database_url": pg_url,
        "redis_url": server.url,
        "cache_prefix": f"f{uuid.uuid4().hex[:8]}",
        "redis_timeout": 0.2,
        **more,
    }


def version(response: httpx.Response) -> int:
    assert response.status_code in (200, 201), response.text
    return int(response.headers["etag"].strip('"'))


@pytest.mark.redis
async def test_redis_stopped_mid_test_then_back(make_client: ClientFactory, pg_url: str) -> None:
    async with private_redis() as server, make_client(**settings(pg_url, server)) as client:
        ids = [unique_id("outage") for _ in range(5)]
        latest = {rid: version(await client.put(f"/results/{rid}", json={"n": 0})) for rid in ids}
        for rid in ids:
            assert (await client.get(f"/results/{rid}")).headers["x-cache"] == "HIT"

        await server.stop()
        outage_requests = 0
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            for rid in ids:
                latest[rid] = version(await client.put(f"/results/{rid}", json={"t": 1}))
                got = await client.get(f"/results/{rid}")
                assert version(got) == latest[rid], "read your write, Redis or not"
                outage_requests += 2
        ready = (await client.get("/readyz")).json()
        assert ready["checks"]["cache"] in ("redis open", "redis half-open"), ready

        await server.start()  # empty: nothing persisted
        observer = aioredis.Redis.from_url(server.url)
        try:
            back = time.monotonic()
            while not [key async for key in observer.scan_iter("*:results:*")]:
                assert time.monotonic() - back < 15, "the cache never came back into use"
                for rid in ids:
                    assert version(await client.get(f"/results/{rid}")) == latest[rid]
                await asyncio.sleep(0.1)
            resumed = time.monotonic() - back
            hits = [(await client.get(f"/results/{rid}")).headers["x-cache"] for rid in ids]
        finally:
            await observer.aclose()
        assert hits == ["HIT"] * len(ids)
        print(
            f"\n{outage_requests} requests during the outage, all 2xx;"
            f" Redis filled again {resumed:.1f} s after it came back"
        )


@pytest.mark.redis
async def test_a_write_that_missed_a_frozen_redis_never_serves_the_old_entry(
    make_client: ClientFactory, pg_url: str
) -> None:
    rid = unique_id("frozen")
    admin = {"authorization": f"Bearer {TOKEN}"}
    async with private_redis() as server:
        config = settings(pg_url, server, admin_token=TOKEN)
        key = f"{config['cache_prefix']}:results:{rid}"
        async with (
            aioredis.Redis.from_url(server.url) as observer,
            make_client(**config) as a,
            make_client(**config) as b,
        ):
            assert version(await a.put(f"/results/{rid}", json={"n": 1})) == 1
            old_entry = await observer.get(key)
            assert isinstance(old_entry, bytes)
            assert old_entry.startswith(b"1 ")
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                assert version(await a.put(f"/results/{rid}", json={"n": 2})) == 2
                for _ in range(20):
                    assert version(await a.get(f"/results/{rid}")) == 2
                    await asyncio.sleep(0.05)
                stats = (await a.get("/admin/cache/stats", headers=admin)).json()
                assert stats["results"]["unsynced"] == 1, stats
            finally:
                server.process.send_signal(signal.SIGCONT)

            # The frozen server may still run the write it had buffered; put the old
            # entry back, as if that write had been lost for good.
            await observer.set(key, old_entry)
            thawed = time.monotonic()
            while True:
                assert version(await a.get(f"/results/{rid}")) == 2, "the old entry leaked"
                entry = await observer.get(key)
                stats = (await a.get("/admin/cache/stats", headers=admin)).json()
                repairs_done = stats["results"]["unsynced"] == 0
                if repairs_done and isinstance(entry, bytes) and entry.startswith(b"2 "):
                    break
                assert time.monotonic() - thawed < 15, f"Redis still holds {entry!r}"
                await asyncio.sleep(0.05)
            repaired = time.monotonic() - thawed
            assert version(await b.get(f"/results/{rid}")) == 2, "the other replica sees it too"
        print(f"\nRedis repaired {repaired:.2f} s after it thawed")


@pytest.mark.redis
async def test_the_listener_reconnects_and_forgets_l1_after_a_gap(
    pool: ConnectionPool,
) -> None:
    """Invalidations sent while the listener was away are lost, so L1 must be emptied."""
    async with private_redis() as server:
        manager = CacheManager(RedisBackend(server.url, socket_timeout=0.2), prefix="gap")
        results = ResultCache(manager, ResultStore(pool), l1=LocalCache(1 << 20))
        async with results:
            assert results.listener is not None
            assert results.listener.connected
            rid = unique_id("gap")
            await results.put(rid, {"n": 1})
            await results.get(rid)
            assert results.stats().l1_entries == 1

            await server.stop()
            deadline = time.monotonic() + 20
            while results.listener.connected:
                assert time.monotonic() < deadline, "the listener never noticed"
                await asyncio.sleep(0.05)
            await server.start()
            assert await results.listener.wait_connected(10)
            assert results.stats().l1_entries == 0
            assert results.stats().listener == "connected"
        await manager.aclose()


def test_entries_round_trip_and_refuse_what_they_are_not() -> None:
    moment = datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC)
    stored = StoredResult(ResultMeta("r-1", 7, moment, moment), b'{"a": 1}')
    assert entry.decode("r-1", entry.encode(stored)) == stored
    assert entry.decode("r-1", entry.encode(Absent("r-1", 9))) == Absent("r-1", 9)
    assert leading_version(entry.encode(stored)) == 7
    for junk in (b"", b"{}", b"7 X\n", b"7 R 1\n{}"):
        with pytest.raises(ValueError, match="entry"):
            entry.decode("r-1", junk)


@pytest.mark.redis
async def test_the_listener_pings_a_quiet_channel_and_leaves_a_frozen_redis() -> None:
    """The listener's read waits with no timeout, so a second task watches it: a quiet
    but live connection answers the pings and stays trusted; a frozen Redis answers
    nothing, and the listener reconnects once it thaws, reporting the gap."""
    received: list[str] = []
    gaps: list[float] = []
    async with private_redis() as server:
        backend = RedisBackend(server.url, socket_timeout=0.2)
        listener = InvalidationListener(
            backend,
            "quiet",
            received.append,
            lambda: gaps.append(time.monotonic()),
            ping_interval=0.2,
            dead_after=0.6,
        )
        listener.start()
        try:
            assert await listener.wait_connected(10)
            async with aioredis.Redis.from_url(server.url) as publisher:
                await publisher.publish("quiet", "one")
                deadline = time.monotonic() + 5
                while received != ["one"]:
                    assert time.monotonic() < deadline, received
                    await asyncio.sleep(0.01)
            await asyncio.sleep(1.5)  # seven ping intervals, two dead_after, no message
            assert listener.connected, "a quiet, live connection was given up"
            assert len(gaps) == 1

            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                frozen = time.monotonic()
                while listener.connected:
                    assert time.monotonic() - frozen < 5, "the listener trusted a frozen Redis"
                    await asyncio.sleep(0.02)
            finally:
                server.process.send_signal(signal.SIGCONT)
            assert await listener.wait_connected(10)
            assert len(gaps) == 2, "the reconnect did not report its gap"
        finally:
            await listener.aclose()
            await backend.aclose()
