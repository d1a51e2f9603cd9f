"""Admin endpoints, the cache in /readyz and ``service cache stats``: real PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from tests.helpers import (
    ClientFactory,
    assert_problem,
    closed_port,
    unique_id,
)
from tests.support.server import run_cli

TOKEN = "s3cret-admin-token-123456"
AUTH = {"authorization": f"Bearer {TOKEN}"}
STATS = "/admin/cache/stats"
INVALIDATE = "/admin/cache/invalidate"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def admin(
    make_client: ClientFactory, pg_url: str, redis_url: str, prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on PostgreSQL and Redis, with an admin token."""
    settings = {"redis_url": redis_url, "cache_prefix": prefix, "admin_token": TOKEN}
    async with make_client(database_url=pg_url, **settings) as client:
        yield client


async def result_keys(redis: aioredis.Redis, prefix: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{prefix}:results:*", count=500)]


# --- authorization ------------------------------------------------------------------------


async def test_admin_routes_do_not_exist_without_a_token(
    make_client: ClientFactory, pg_url: str
) -> None:
    async with make_client(database_url=pg_url) as client:
        assert_problem(await client.get(STATS, headers=AUTH), 404)
        assert_problem(await client.post(INVALIDATE, headers=AUTH, json={"namespace": "x"}), 404)


async def test_missing_or_wrong_credentials_are_refused_without_echoing_the_token(
    admin: httpx.AsyncClient,
) -> None:
    missing = await admin.get(STATS)
    assert_problem(missing, 401)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    basic = await admin.get(STATS, headers={"authorization": "Basic xyz"})
    assert_problem(basic, 401)
    assert basic.headers["www-authenticate"].startswith("Bearer")
    wrong = await admin.get(STATS, headers={"authorization": f"Bearer {TOKEN}x"})
    assert_problem(wrong, 403)
    posted = await admin.post(INVALIDATE, json={"namespace": "results"})
    assert_problem(posted, 401)
    for response in (missing, basic, wrong, posted):
        assert TOKEN not in response.text


# --- GET /admin/cache/stats ---------------------------------------------------------------


async def test_stats_report_every_tier_and_redis(admin: httpx.AsyncClient) -> None:
    response = await admin.get(STATS, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cache"]["backend"] == "redis"
    assert body["cache"]["breaker"] == "closed"
    assert {"hits", "misses", "errors"} <= body["cache"].keys()
    assert body["results"]["listener"] == "connected"
    assert {"l1_hits", "shared_hits", "loads", "l1_entries"} <= body["results"].keys()
    assert body["backend"]["redis_version"]
    assert body["backend"]["hiredis"] is True
    assert body["backend"]["used_memory"] > 0


async def test_stats_count_reads_served_from_the_cache(admin: httpx.AsyncClient) -> None:
    rid = unique_id("adm")
    assert (await admin.put(f"/results/{rid}", json={"a": 1})).status_code == 201
    for _ in range(2):
        got = await admin.get(f"/results/{rid}")
        assert got.status_code == 200
        assert got.headers["x-cache"] == "HIT"
    body = (await admin.get(STATS, headers=AUTH)).json()
    results = body["results"]
    # The write put the version into Redis: the first read finds it there, the second
    # in L1 (or in Redis again if the write's own notice dropped L1 in between).
    assert results["shared_hits"] >= 1
    assert results["l1_hits"] + results["shared_hits"] == 2
    assert results["loads"] == 0
    assert body["cache"]["hits"] >= 1


# --- POST /admin/cache/invalidate ---------------------------------------------------------


async def test_invalidating_an_id_drops_it_from_redis_and_the_next_read_misses(
    admin: httpx.AsyncClient, redis: aioredis.Redis, prefix: str
) -> None:
    rid = unique_id("adm")
    await admin.put(f"/results/{rid}", json={"a": 1})
    first = await admin.get(f"/results/{rid}")
    assert await redis.exists(f"{prefix}:results:{rid}") == 1

    response = await admin.post(INVALIDATE, headers=AUTH, json={"analysis_id": rid})
    assert response.status_code == 200, response.text
    assert response.json() == {"invalidated": 1, "analysis_id": rid}
    assert await redis.exists(f"{prefix}:results:{rid}") == 0

    again = await admin.get(f"/results/{rid}")
    assert again.status_code == 200
    assert again.headers["x-cache"] == "MISS"
    assert again.content == first.content


async def test_invalidating_the_results_namespace_drops_all_its_keys(
    admin: httpx.AsyncClient, redis: aioredis.Redis, prefix: str
) -> None:
    for _ in range(2):
        await admin.put(f"/results/{unique_id('adm')}", json={"a": 1})
    assert len(await result_keys(redis, prefix)) == 2

    response = await admin.post(INVALIDATE, headers=AUTH, json={"namespace": "results"})
    assert response.status_code == 200, response.text
    assert response.json() == {"invalidated": 2, "namespace": "results"}
    assert await result_keys(redis, prefix) == []


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"{}", 422),
        (b"[]", 422),
        (b'{"analysis_id": 5}', 422),
        (b'{"analysis_id": "a", "namespace": "results"}', 422),
        (b'{"analysis_id": "a/b"}', 422),
        (b'{"namespace": "no:colons"}', 422),
    ],
)
async def test_bad_invalidation_orders_are_problems(
    admin: httpx.AsyncClient, content: bytes, status: int
) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    response = await admin.post(INVALIDATE, headers=headers, content=content)
    assert_problem(response, status)


async def test_invalidation_needs_a_json_body(admin: httpx.AsyncClient) -> None:
    headers = {**AUTH, "content-type": "text/plain"}
    response = await admin.post(INVALIDATE, headers=headers, content=b'{"namespace": "results"}')
    assert_problem(response, 415)


@pytest.mark.parametrize("order", [{"analysis_id": "gone-1"}, {"namespace": "results"}])
async def test_invalidation_with_redis_unreachable_is_503_not_success(
    make_client: ClientFactory, pg_url: str, order: dict[str, str]
) -> None:
    settings = {"redis_url": f"redis://127.0.0.1:{closed_port()}/0", "admin_token": TOKEN}
    async with make_client(database_url=pg_url, **settings) as client:
        response = await client.post(INVALIDATE, headers=AUTH, json=order)
    body = assert_problem(response, 503)
    assert body["type"] == "/problems/cache-unavailable"
    assert response.headers["retry-after"] == "2"


# --- /readyz ------------------------------------------------------------------------------


async def test_readyz_reports_the_memory_cache_without_redis(
    make_client: ClientFactory, pg_url: str
) -> None:
    async with make_client(database_url=pg_url) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["cache"] == "memory"


async def test_readyz_reports_the_redis_breaker(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "cache": "redis closed"}


# --- service cache stats ------------------------------------------------------------------


async def test_cli_cache_stats_prints_what_redis_reports(redis_url: str) -> None:
    status, out, err = await run_cli("cache", "stats", env={"REDIS_URL": redis_url})
    assert status == 0, err
    info = json.loads(out)
    assert info["redis_version"]
    assert info["hiredis"] is True


async def test_cli_cache_stats_without_redis_url_exits_1() -> None:
    status, out, err = await run_cli("cache", "stats")
    assert status == 1, (out, err)
    assert out == ""
    assert "REDIS_URL is not set" in err


async def test_cli_cache_stats_with_redis_down_exits_1_with_one_line() -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    status, out, err = await run_cli("cache", "stats", env=env)
    assert status == 1, (out, err)
    assert out == ""
    assert "Traceback" not in err
    # A log record of the failed call may precede it; the operator's message is one line.
    messages = [line for line in err.splitlines() if line.startswith("service:")]
    assert messages == ["service: cache redis unreachable"], err
