"""``service serve --workers N``: several processes on one port, honest about it.

Each test starts the real command (uvicorn's supervisor and its workers) on the test
PostgreSQL and Redis, and talks to it over TCP with a new connection per request, so
the kernel spreads the requests over the workers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers import Database, free_port, scratch_database, unique_id
from tests.support.server import RunningService, run_cli, running_service

pytestmark = pytest.mark.slow

WORKERS = 2
ROUTE = 'endpoint="/results/{analysis_id}"'


@pytest.fixture
async def fresh_db(pg_admin_url: str) -> AsyncIterator[Database]:
    async with scratch_database("svc_workers", pg_admin_url) as database:
        yield database


@pytest.fixture
async def workers(fresh_db: Database, redis_url: str, prefix: str) -> AsyncIterator[RunningService]:
    env = {"DATABASE_URL": fresh_db.url, "REDIS_URL": redis_url, "CACHE_PREFIX": prefix}
    async with running_service(env, args=["--workers", str(WORKERS)]) as server:
        await every_worker_up(server)
        yield server


async def scrape(server: RunningService) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get("/metrics", headers={"connection": "close"})
    assert response.status_code == 200, response.text
    return response.text


def samples(text: str, name: str, *labels: str) -> dict[str, float]:
    """Per worker, the value of ``name`` summed over the series carrying ``labels``."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{") or not all(label in line for label in labels):
            continue
        worker = re.search(r'worker="(\d+)"', line)
        assert worker is not None, line
        found[worker[1]] = found.get(worker[1], 0.0) + float(line.rsplit(" ", 1)[1])
    return found


async def every_worker_up(server: RunningService) -> None:
    """Until a scrape shows every worker's build_info (each has started its metrics)."""
    async with asyncio.timeout(30):
        while len(samples(await scrape(server), "build_info")) < WORKERS:
            await asyncio.sleep(0.2)


async def spread(server: RunningService, requests: int, path: str) -> list[httpx.Response]:
    """``requests`` GETs of ``path``, 8 at a time, each on a connection of its own."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        gate = asyncio.Semaphore(8)

        async def one() -> httpx.Response:
            async with gate:
                return await client.get(path, headers={"accept-encoding": "identity"})

        return await asyncio.gather(*(one() for _ in range(requests)))


async def test_workers_need_redis_and_a_sensible_count() -> None:
    status, out, err = await run_cli("serve", "--port", str(free_port()), "--workers", "2")
    assert status == 2, (out, err)
    assert "--workers above 1 needs REDIS_URL" in err
    for count in ("0", "65", "two"):
        status, out, err = await run_cli("serve", "--workers", count)
        assert status == 2, (count, out, err)
        assert "a whole number from 1 to 64" in err


async def test_metrics_count_every_request_whichever_worker_answers(
    workers: RunningService,
) -> None:
    analysis_id = unique_id("workers")
    async with httpx.AsyncClient(base_url=workers.url, timeout=10) as client:
        assert (await client.put(f"/results/{analysis_id}", json={"n": 1})).status_code == 201
    labels = ('method="GET"', ROUTE, 'status_class="2xx"')
    before = samples(await scrape(workers), "responses_total", *labels)

    answers = await spread(workers, 300, f"/results/{analysis_id}")

    assert [r.status_code for r in answers] == [200] * 300
    after = samples(await scrape(workers), "responses_total", *labels)
    served = {w: after.get(w, 0.0) - before.get(w, 0.0) for w in after}
    assert sum(served.values()) == 300, served
    assert len([w for w, n in served.items() if n > 0]) == WORKERS, served
    # The text format holds: one HELP and TYPE per family, whoever answered.
    text = await scrape(workers)
    assert text.count("# TYPE responses_total counter") == 1
    assert len(samples(text, "requests_in_progress")) == WORKERS


async def test_a_write_through_one_worker_is_what_every_worker_serves(
    workers: RunningService,
) -> None:
    """Both workers have version 1 in L1; after version 2 is acknowledged (by either),
    no worker serves version 1 once the write's notice has had a moment to arrive."""
    analysis_id = unique_id("workers")
    path = f"/results/{analysis_id}"
    async with httpx.AsyncClient(base_url=workers.url, timeout=10) as client:
        assert (await client.put(path, json={"v": 1})).status_code == 201
        await spread(workers, 40, path)  # into each worker's L1
        assert (await client.put(path, json={"v": 2})).status_code == 200
    await asyncio.sleep(0.2)
    answers = await spread(workers, 60, path)
    assert {r.headers["etag"] for r in answers} == {'"2"'}
    hits = samples(await scrape(workers), "cache_hits_total", 'cache_type="l1"')
    assert len([w for w, n in hits.items() if n > 0]) == WORKERS, hits


async def test_migrations_run_once_before_the_workers_start(
    workers: RunningService,
) -> None:
    migrated = re.findall(r"database migrated", workers.log())
    assert len(migrated) == 1, workers.log()
