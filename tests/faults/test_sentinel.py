"""Redis behind Sentinel (``REDIS_URL=redis+sentinel://...``): a master fails over to
its replica mid-load, and no promise breaks.

A private master, its replica and three Sentinels (``tests/support/private_sentinel.py``)
in front of a private PostgreSQL; two replicas of the service (processes, as deployed)
write and read the same ids. Replication is asynchronous, so a write the master took
may be missing on the replica that replaces it: behind Sentinel each versioned write
waits (``WAIT``) for one replica, and one no replica confirmed is treated as not
reaching Redis (noted in PostgreSQL, read from there by every replica until repaired).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError

from service.cache.backends import RedisBackend
from service.cache.result_cache import UNSYNCED_POLL
from tests.faults.harness import FaultBed, Ledger, LoadDriver, Profile, fresh_ids
from tests.faults.test_fault_suite import Show, assert_quiet_logs, assert_sound, budget
from tests.support.private_postgres import private_postgres
from tests.support.private_sentinel import SentinelGroup, command, private_sentinel_group

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.tools]

L1_TTL = 2.0
CACHE_OUTAGE = r"cache redis failed, serving without it"
"""The warning a replica logs while the master is gone (not an error)."""


@pytest.fixture
async def group() -> AsyncIterator[SentinelGroup]:
    async with private_sentinel_group() as running:
        yield running


@pytest.fixture
async def sentinel_bed(group: SentinelGroup) -> AsyncIterator[FaultBed]:
    """A fault bed whose replicas reach Redis through the Sentinels."""
    scratch = Path(tempfile.mkdtemp(prefix="svc-sentinel-bed-"))
    try:
        async with private_postgres() as postgres:
            bed = FaultBed(group.master, postgres, scratch)
            try:
                yield bed
            finally:
                await asyncio.gather(*(replica.stop() for replica in bed.replicas))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def cut_off_replica(group: SentinelGroup) -> None:
    """The replica stops receiving the master's writes: frozen, so it cannot reconnect,
    and its link closed by the master, so nothing more is buffered for it."""
    group.replica.freeze()
    client = aioredis.Redis(host="127.0.0.1", port=group.master.port, socket_timeout=2)
    try:
        await command(client, "CLIENT", "KILL", "TYPE", "replica")
    finally:
        await client.aclose()


async def fail_over(group: SentinelGroup) -> float:
    """Kill the master (SIGKILL), let the replica run, wait until it is the master."""
    await group.master.kill()
    group.replica.thaw()
    return await group.wait_for_master(group.replica.port)


async def test_a_write_no_replica_got_is_lost_by_the_failover_and_reported_unreached(
    group: SentinelGroup,
) -> None:
    """The loss is real: after the failover Redis holds the older version of a key whose
    newer one the old master had taken. With WAIT the backend said so (None); a client
    that does not wait (the control) was told the write succeeded."""
    waiting = RedisBackend(group.url, socket_timeout=0.5)
    trusting = RedisBackend(group.url, socket_timeout=0.5)
    trusting.replicas_to_wait_for = 0
    try:
        assert await waiting.set_if_newer("k1", b"1 one", 60) is True  # the replica has it
        assert await trusting.set_if_newer("k2", b"1 one", 60) is True
        assert await command(waiting.client, "WAIT", 1, 2000) == 1
        await cut_off_replica(group)
        started = time.perf_counter()
        assert await waiting.set_if_newer("k1", b"2 two", 60) is None
        assert time.perf_counter() - started < 1.0  # half the socket timeout, and a bit
        assert await trusting.set_if_newer("k2", b"2 two", 60) is True
        await fail_over(group)
        survivor = aioredis.Redis(host="127.0.0.1", port=group.replica.port, socket_timeout=2)
        try:
            assert await survivor.mget(["k1", "k2"]) == [b"1 one", b"1 one"]
        finally:
            await survivor.aclose()
        # The clients find the new master by themselves, once a Sentinel names it
        # (right after the failover some may still report the old one as down).
        deadline = time.monotonic() + 10
        while True:
            try:
                assert await waiting.get("k1") == b"1 one"
                break
            except MasterNotFoundError:
                assert time.monotonic() < deadline, "no Sentinel named the new master"
                await asyncio.sleep(0.1)
    finally:
        await waiting.aclose()
        await trusting.aclose()


async def test_another_replica_never_serves_the_version_the_failover_lost(
    group: SentinelGroup, sentinel_bed: FaultBed
) -> None:
    """Replica a writes v2 while the Redis replica is cut off, then the master dies and
    the replica (holding v1) takes over. Replica b, which had v1 cached, answers v2 once
    it has read the note of the unconfirmed write (within UNSYNCED_POLL)."""
    env = {"REDIS_URL": group.url}
    a = await sentinel_bed.start_replica("a", l1_ttl=L1_TTL, env=env)
    b = await sentinel_bed.start_replica("b", l1_ttl=L1_TTL, env=env)
    ledger = Ledger()
    [analysis_id] = fresh_ids("lost", 1)
    async with LoadDriver(ledger, [analysis_id], write_to=[a], read_from=[b], concurrency=1) as d:
        await d.put(a, analysis_id)
        await d.get(b, analysis_id)
        await d.get(b, analysis_id)  # now in b's L1, and in Redis on both nodes
        await cut_off_replica(group)
        acked = await d.put(a, analysis_id)
        assert getattr(acked, "version", None) == 2, acked
        took = await fail_over(group)
        await asyncio.sleep(UNSYNCED_POLL + 0.5)
        read = await d.get(b, analysis_id)
        again = await d.get(b, analysis_id)
    assert getattr(read, "version", None) == 2, (read, f"failover took {took:.1f} s")
    assert getattr(again, "version", None) == 2, again
    assert_quiet_logs(sentinel_bed, (CACHE_OUTAGE,))


async def test_failover_under_load_fails_no_request_and_serves_nothing_stale(
    group: SentinelGroup, sentinel_bed: FaultBed, profile: Profile, show: Show
) -> None:
    """Two replicas write and read the same ids; the master is killed mid-load and the
    Sentinels promote the replica. No request fails (not even a 503: Redis is a cache),
    no acknowledged write is lost, no read is older than an acknowledged version by
    more than L1_TTL, and Redis is used again after the failover."""
    env = {"REDIS_URL": group.url}
    async with asyncio.timeout(budget(profile, 3) + 30):
        a = await sentinel_bed.start_replica("a", l1_ttl=L1_TTL, env=env)
        b = await sentinel_bed.start_replica("b", l1_ttl=L1_TTL, env=env)
        ledger = Ledger()
        ids = fresh_ids("sentinel", profile.ids)
        async with LoadDriver(
            ledger, ids, write_to=[a, b], read_from=[a, b], concurrency=profile.concurrency
        ) as driver:
            await driver.seed()
            async with driver.load():
                await asyncio.sleep(profile.phase)
                took = await fail_over(group)
                await asyncio.sleep(profile.at_least(3.0))
        summary = await ledger.summarize(sentinel_bed, "sentinel failover", bound=L1_TTL)
    show(summary)
    print(f"failover took {took:.2f} s")
    assert_sound(summary, sentinel_bed)
    assert summary.unavailable == 0, summary.render()
    assert_quiet_logs(sentinel_bed, (CACHE_OUTAGE,))
    promoted = f"redis://127.0.0.1:{group.replica.port}/0"
    shared = await sentinel_bed.shared_versions(ids, promoted)
    assert any(version is not None for version in shared.values()), "Redis not used again"
