"""The fault suite: real replicas under a mixed load while Redis or PostgreSQL fails.

Each scenario drives PUTs and GETs through ``python -m service serve`` processes on a
private Redis and PostgreSQL, breaks one of them (kill, freeze, stop, SIGTERM), and
judges the run from its ledger (see ``harness.py``): no failed request (503 with
Retry-After is the only refusal allowed, and only where the scenario says), no lost
acknowledged write (PostgreSQL read directly), no read older than an acknowledged
version by more than the scenario's bound, and no error in the replicas' logs that the
scenario does not expect.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.faults.harness import (
    STOP_TIMEOUT,
    Ack,
    FaultBed,
    Ledger,
    LoadDriver,
    Profile,
    Read,
    ServiceProcess,
    Summary,
    fresh_ids,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

Show = Callable[[Summary], None]
TOKEN = "fault-suite-admin-token"


def budget(profile: Profile, phases: float) -> float:
    """Seconds a scenario may take in all: its phases of load, plus start-up and slack."""
    return phases * profile.phase + 60.0


def assert_sound(summary: Summary, bed: FaultBed) -> None:
    """No failed request, no lost write, no read stale beyond the bound."""
    assert summary.failed == 0, f"{summary.render()}\n{bed.error_report()}"
    assert summary.lost == 0, summary.render()
    assert summary.stale == 0, summary.render()


def assert_quiet_logs(bed: FaultBed, allowed: tuple[str, ...] = ()) -> None:
    """No ERROR or Traceback line in any replica's stderr, except ``allowed`` ones."""
    errors = bed.error_lines(allowed)
    assert not errors, bed.error_report()


@asynccontextmanager
async def one_replica_under_load(
    bed: FaultBed,
    profile: Profile,
    name: str,
    l1_ttl: float,
    *,
    ids: list[str] | None = None,
    env: dict[str, str] | None = None,
    **driver_options: Any,
) -> AsyncIterator[tuple[ServiceProcess, LoadDriver, Ledger]]:
    """One replica, a ledger and a seeded load driver on its ids: how scenarios a to d
    begin. The load itself starts where the scenario says (``driver.load()``)."""
    replica = await bed.start_replica(name, l1_ttl=l1_ttl, env=env)
    ledger = Ledger()
    async with LoadDriver(
        ledger,
        ids or fresh_ids(name, profile.ids),
        write_to=[replica],
        read_from=[replica],
        concurrency=profile.concurrency,
        **driver_options,
    ) as driver:
        await driver.seed()
        yield replica, driver, ledger


# --- a) Redis killed ---------------------------------------------------------------------


async def test_redis_killed_under_load_then_started_again(
    bed: FaultBed, profile: Profile, show: Show
) -> None:
    """A crashed Redis costs nothing but speed: reads fail open to PostgreSQL, writes are
    acknowledged once PostgreSQL has them, and the Redis that comes back (empty) is used
    again without serving anything older than L1_TTL allows."""
    l1_ttl = 2.0
    async with asyncio.timeout(budget(profile, 3)):
        async with (
            one_replica_under_load(bed, profile, "kill", l1_ttl) as (_, driver, ledger),
            driver.load(),
        ):
            await asyncio.sleep(profile.phase)
            await bed.redis.kill()
            await asyncio.sleep(profile.phase)
            await bed.redis.start()
            await asyncio.sleep(profile.at_least(2.0))
        summary = await ledger.summarize(bed, "a) redis SIGKILL", bound=l1_ttl)
    show(summary)
    assert_sound(summary, bed)
    assert summary.unavailable == 0, summary.render()
    assert_quiet_logs(bed)


# --- b) Redis frozen ---------------------------------------------------------------------


async def test_redis_frozen_under_load_then_thawed(
    bed: FaultBed, profile: Profile, show: Show
) -> None:
    """A stalled Redis (connections accepted, nothing answered) costs REDIS_TIMEOUT per
    request until the breaker opens, never a failure; what it buffered while frozen and
    runs on waking must not put an older version in front of a newer one."""
    l1_ttl = 2.0
    async with asyncio.timeout(budget(profile, 3)):
        async with (
            one_replica_under_load(bed, profile, "freeze", l1_ttl) as (_, driver, ledger),
            driver.load(),
        ):
            await asyncio.sleep(profile.phase)
            bed.redis.freeze()
            try:
                await asyncio.sleep(profile.at_least(3.0))
            finally:
                bed.redis.thaw()
            await asyncio.sleep(profile.at_least(2.0))
        summary = await ledger.summarize(bed, "b) redis SIGSTOP", bound=l1_ttl)
    show(summary)
    assert_sound(summary, bed)
    assert summary.unavailable == 0, summary.render()
    assert_quiet_logs(bed)


# --- c) PostgreSQL stopped ---------------------------------------------------------------


async def test_postgres_stopped_under_load_then_started(
    bed: FaultBed, profile: Profile, show: Show
) -> None:
    """Without the database the service refuses what needs it (writes, uncached reads)
    with a fast 503 and Retry-After, keeps serving what is cached, and recovers by
    itself, same process, when the database is back."""
    l1_ttl = 2.0
    async with asyncio.timeout(budget(profile, 3)):
        ids = fresh_ids("pg", profile.ids)
        async with one_replica_under_load(
            bed,
            profile,
            "pg",
            l1_ttl,
            ids=ids,
            env={"DB_CONNECT_TIMEOUT": "1"},
            cold_ids=fresh_ids("pg-cold", max(2, profile.ids // 4)),
        ) as (replica, driver, ledger):
            pid = replica.process.pid if replica.process else None
            async with driver.load():
                await asyncio.sleep(profile.phase)
                stopping = time.monotonic()
                await bed.postgres.stop()
                await asyncio.sleep(profile.phase)
                await bed.postgres.start()
                started = time.monotonic()
                await asyncio.sleep(profile.at_least(3.0))
            # Recovered without a restart: the same process takes every write again.
            for analysis_id in ids:
                assert isinstance(await driver.put(replica, analysis_id), Ack), ledger.others[-1]
        summary = await ledger.summarize(bed, "c) postgres stopped", bound=l1_ttl)
    show(summary)
    assert_sound(summary, bed)
    assert replica.returncode is None, replica.stderr()
    assert replica.process is not None
    assert replica.process.pid == pid, "the replica was restarted"
    refusals = [o for o in ledger.others if o.status == 503]
    assert refusals, "no 503 while the database was down: the fault did not take effect"
    assert summary.unavailable_without_retry_after == 0, summary.render()
    assert summary.unavailable_cached_reads == 0, summary.render()
    early = [o for o in refusals if o.received_at < stopping]
    assert not early, early[:3]
    late = [o for o in refusals if o.sent_at > started + 5.0]
    assert not late, f"still refusing 5 s after the database came back: {late[:3]}"
    cached = [r for r in ledger.reads if stopping < r.sent_at and r.received_at < started]
    assert any(r.status == 200 for r in cached), "no cached read answered during the outage"
    assert_quiet_logs(bed)


# --- d) SIGTERM to the service -----------------------------------------------------------


async def _slow_document(pieces: int = 10, pause: float = 0.1) -> AsyncIterator[bytes]:
    """A JSON object sent in pieces over ``pieces * pause`` seconds: a request that is
    surely in flight when the signal arrives."""
    yield b'{"pieces": ['
    for n in range(pieces):
        await asyncio.sleep(pause)
        yield b"%d, " % n
    yield b'"end"]}'


async def test_sigterm_under_load_drains_and_keeps_every_acknowledged_write(
    bed: FaultBed, profile: Profile, show: Show
) -> None:
    """SIGTERM stops new connections, lets every request in flight finish, and every
    write it acknowledged, to the last one, is in PostgreSQL."""
    l1_ttl = 2.0
    async with asyncio.timeout(budget(profile, 2)):
        async with one_replica_under_load(bed, profile, "term", l1_ttl) as (
            replica,
            driver,
            ledger,
        ):
            async with driver.load():
                await asyncio.sleep(profile.phase)
                uploads = [
                    asyncio.create_task(driver.put(replica, analysis_id, _slow_document()))
                    for analysis_id in fresh_ids("term-slow", 3)
                ]
                await asyncio.sleep(0.3)
                assert not any(u.done() for u in uploads), "the slow uploads should be running"
                signalled = time.monotonic()
                replica.signal(signal.SIGTERM)
                assert replica.process is not None
                status = await asyncio.wait_for(replica.process.wait(), STOP_TIMEOUT)
                drained = time.monotonic() - signalled
                await asyncio.sleep(min(profile.phase, 1.0))  # the load meets a closed port
            slow = await asyncio.gather(*uploads)
        summary = await ledger.summarize(
            bed, "d) service SIGTERM", bound=l1_ttl, refused_after=signalled
        )
    show(summary)
    print(f"drained in {drained:.2f} s")
    assert all(isinstance(s, Ack) for s in slow), slow
    assert status == -signal.SIGTERM, (status, replica.stderr())
    assert_sound(summary, bed)
    assert summary.unavailable == 0, summary.render()
    assert "Cancel" not in replica.stderr(), "a request was cut off by the graceful timeout"
    assert_quiet_logs(bed)


# --- e) Redis stalls, the writer restarts ------------------------------------------------


async def test_write_that_missed_a_stalled_redis_survives_a_restart(
    bed: FaultBed, profile: Profile, show: Show
) -> None:
    """The stall-and-restart case. A write acknowledged while Redis was frozen left Redis
    holding the previous version; the replica that wrote it knew (it reads such ids from
    PostgreSQL until it repairs Redis), but it is stopped before Redis wakes. The process
    that replaces it must not serve the previous version from Redis once it answers.

    The version-2 writes go one at a time on purpose: the first few wait REDIS_TIMEOUT
    each and their compare-and-set, buffered by the frozen server, still runs when it
    wakes; after five such failures the breaker opens and the rest are never sent, so
    their previous version is what Redis holds when it wakes, deterministically.
    """
    l1_ttl = 5.0
    async with asyncio.timeout(budget(profile, 2)):
        old = await bed.start_replica("stall", l1_ttl=l1_ttl, env={"ADMIN_TOKEN": TOKEN})
        ids = fresh_ids("stall", profile.ids)
        ledger = Ledger()
        async with LoadDriver(
            ledger,
            ids,
            write_to=[old],
            read_from=[old],
            concurrency=profile.concurrency,
        ) as driver:
            await driver.seed()
            if profile.long:
                async with driver.load():
                    await asyncio.sleep(profile.phase)
            for analysis_id in ids:  # Redis and L1 now hold the current version
                assert isinstance(await driver.get(old, analysis_id), Read)
            before = ledger.acknowledged()
            shared = await bed.shared_versions(ids)
            assert shared == before, "Redis should hold every acknowledged version"

            bed.redis.freeze()
            try:
                for analysis_id in ids:
                    ack = await driver.put(old, analysis_id)
                    assert isinstance(ack, Ack), ack
                    assert ack.version == before[analysis_id] + 1
                stats = await _cache_stats(old)
                assert await old.terminate() == -signal.SIGTERM, old.stderr()
                new = await bed.start_replica("stall", l1_ttl=l1_ttl)
            finally:
                bed.redis.thaw()
            behind = [i for i, v in (await bed.shared_versions(ids)).items() if v == before[i]]
            for analysis_id in ids:
                await driver.get(new, analysis_id)
            answers = {r.analysis_id: r.version for r in ledger.reads if r.replica == new.name}
            if profile.long:
                # The old replica is gone: the load goes on against the one that replaced it.
                driver.write_to = driver.read_from = [new]
                async with driver.load():
                    await asyncio.sleep(profile.phase)
        summary = await ledger.summarize(bed, "e) stall and restart", bound=0.0)
    show(summary)
    print(f"old replica's cache before SIGTERM: {stats}")
    print(f"entries Redis still held at the previous version right after thawing: {len(behind)}")
    wrong = {i: (answers.get(i), before[i] + 1) for i in ids if answers.get(i) != before[i] + 1}
    assert not wrong, (
        f"{len(wrong)} of {len(ids)} ids answered by the new process with the previous"
        f" version (from Redis); (answered, acknowledged): {dict(list(wrong.items())[:4])}"
    )
    assert_sound(summary, bed)
    assert summary.unavailable == 0, summary.render()
    assert_quiet_logs(bed)


async def _cache_stats(replica: ServiceProcess) -> dict[str, object] | None:
    """The unsynced count and breaker state a replica reports (for the report only: the
    verdict is what the next process serves, whatever this one knew)."""
    url = replica.url
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(
                f"{url}/admin/cache/stats", headers={"authorization": f"Bearer {TOKEN}"}
            )
    except httpx.HTTPError:
        return None
    body = response.json() if response.status_code == 200 else {}
    results = body.get("results", {}) if isinstance(body, dict) else {}
    cache = body.get("cache", {}) if isinstance(body, dict) else {}
    return {"unsynced": results.get("unsynced"), "breaker": cache.get("breaker")}


# --- f) read-your-writes across replicas -------------------------------------------------


async def test_a_write_on_one_replica_reaches_another_within_l1_ttl_through_a_stall(
    bed: FaultBed, profile: Profile, show: Show
) -> None:
    """Writes on replica A, reads on replica B. While Redis stalls, B's notices stop; B may
    serve the previous version from its L1, but for at most L1_TTL after A acknowledged
    the write, also once Redis wakes holding entries older than A's writes."""
    l1_ttl = 2.0
    async with asyncio.timeout(budget(profile, 2) + 15):
        a, b = await asyncio.gather(
            bed.start_replica("ryw-a", l1_ttl=l1_ttl), bed.start_replica("ryw-b", l1_ttl=l1_ttl)
        )
        ledger = Ledger()
        async with LoadDriver(
            ledger,
            fresh_ids("ryw", profile.ids),
            write_to=[a],
            read_from=[b],
            concurrency=profile.concurrency,
        ) as driver:
            await driver.seed()
            async with driver.load():
                await asyncio.sleep(profile.phase)
                bed.redis.freeze()
                frozen = time.monotonic()
                try:
                    await asyncio.sleep(2.0 if not profile.long else profile.phase)
                finally:
                    bed.redis.thaw()
                thawed = time.monotonic()
                # Past L1_TTL and the breaker's cool-down (5 s), when B uses Redis again.
                await asyncio.sleep(profile.at_least(8.0))
        summary = await ledger.summarize(bed, "f) read-your-writes across replicas", bound=l1_ttl)
    show(summary)
    during = [k for k in ledger.acks if frozen < k.sent_at < thawed]
    assert during, "no PUT on A was acknowledged while Redis was frozen"
    assert_sound(summary, bed)
    assert summary.unavailable == 0, summary.render()
    assert_quiet_logs(bed)
