"""The app in process when the database misbehaves: gone, never there, or too busy.

Each failure must reach the client fast as a 503 problem with ``Retry-After`` (never a
500 or a hang), and the service must recover by itself once the database is back.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest

from tests.helpers import PROBLEM, ClientFactory, free_port, side_dsn, unique_id
from tests.support.private_postgres import private_postgres


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    """A 503 problem with Retry-After, answered within a second."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["status"] == 503
    assert elapsed < 1.0, f"took {elapsed:.2f} s"


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.get(path)
    return response, time.perf_counter() - started


@pytest.mark.slow
@pytest.mark.postgres
async def test_database_stopped_then_started_again(make_client: ClientFactory) -> None:
    analysis_id = unique_id("restart")
    document = {"survives": "a restart"}
    async with (
        asyncio.timeout(55),
        private_postgres() as cluster,
        make_client(database_url=cluster.url, db_connect_timeout=1.0) as client,
    ):
        put = await client.put(f"/results/{analysis_id}", json=document)
        assert put.status_code == 201, put.text
        assert (await client.get(f"/results/{analysis_id}")).status_code == 200

        await cluster.stop()

        # What is cached is still served; anything else needs the database.
        cached = await client.get(f"/results/{analysis_id}")
        assert cached.status_code == 200, cached.text
        assert cached.headers["x-cache"] == "HIT"
        uncached = f"{analysis_id}-uncached"
        response, elapsed = await timed_get(client, f"/results/{uncached}")
        assert_unavailable(response, elapsed)
        assert response.json()["type"] == "/problems/database-unavailable"
        response, elapsed = await timed_get(client, "/readyz")
        assert_unavailable(response, elapsed)
        assert response.json()["checks"]["database"] == "unavailable"
        # Asking again changes nothing while the database is down (no cached failure).
        response, elapsed = await timed_get(client, f"/results/{uncached}")
        assert_unavailable(response, elapsed)

        await cluster.start()

        # The same app (same pool) recovers by itself: no restart, no new client.
        deadline = time.monotonic() + 10
        while True:
            response = await client.get(f"/results/{uncached}")
            if response.status_code == 404 or time.monotonic() > deadline:
                break
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.2)
        assert response.status_code == 404, response.text
        assert (await client.get(f"/results/{analysis_id}")).json() == document
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"] == "ok"


async def test_nothing_listening_on_the_database_port(make_client: ClientFactory) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres"
    async with (
        asyncio.timeout(30),
        make_client(database_url=url, migrate_on_start=False, db_connect_timeout=1.0) as client,
    ):
        response, elapsed = await timed_get(client, "/results/x")
        assert_unavailable(response, elapsed)
        assert response.json()["type"] == "/problems/database-unavailable"

        response, elapsed = await timed_get(client, "/readyz")
        assert_unavailable(response, elapsed)
        assert response.json()["checks"]["database"] == "unavailable"

        live = await client.get("/healthz")
        assert live.status_code == 200
        assert live.json() == {"status": "ok"}


async def test_pool_exhaustion_answers_503_and_returns_every_connection(
    make_client: ClientFactory, pg_url: str
) -> None:
    # The app's pool object is out of reach through httpx, so the one connection is kept
    # busy on the database side instead: an ACCESS EXCLUSIVE lock on `results`, taken
    # from outside, makes the first GET's SELECT wait while it holds the only pooled
    # connection; the other GETs wait for the pool, give up after DB_POOL_TIMEOUT
    # (0.2 s, well before the lock goes after 1 s) and must answer 503. The pool's
    # pre-ping (SELECT 1) does not touch the table, so it is not blocked.
    analysis_id = unique_id("busy")
    dsn = side_dsn(pg_url)
    async with (
        asyncio.timeout(30),
        make_client(
            database_url=pg_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.2
        ) as client,
    ):
        locker = await asyncpg.connect(dsn)
        try:
            lock = locker.transaction()
            await lock.start()
            released = False
            releaser: asyncio.Task[None] | None = None

            async def release(after: float) -> None:
                nonlocal released
                await asyncio.sleep(after)
                if not released:
                    released = True
                    await lock.rollback()

            try:
                await locker.execute("LOCK TABLE results IN ACCESS EXCLUSIVE MODE")
                releaser = asyncio.create_task(release(1.0))
                # Twenty different ids: GETs of one id would share one query.
                responses = await asyncio.gather(
                    *(client.get(f"/results/{analysis_id}-{n}") for n in range(20))
                )
                await releaser
            finally:
                if releaser is not None:
                    releaser.cancel()
                await release(0)  # also when a GET failed before the lock went
        finally:
            await locker.close()

        statuses = [r.status_code for r in responses]
        assert 500 not in statuses, statuses
        assert set(statuses) <= {200, 404, 503}, statuses
        busy = [r for r in responses if r.status_code == 503]
        assert busy, statuses
        assert len(busy) < len(responses), "the connection holder should have succeeded"
        for response in busy:
            assert response.headers["content-type"] == PROBLEM
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["type"] == "/problems/pool-exhausted"

        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        pool = ready.json()["pool"]
        assert pool["checked_out"] == 0, pool
        assert pool["waiting"] == 0, pool
        assert pool["timeouts"] >= len(busy), pool
