"""What caches downstream are told: Cache-Control, Cache-Status, and dates that hold."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime

import httpx
import pytest

from service.api.caching import cache_control
from service.config import Settings
from tests.helpers import ClientFactory, forget_prefix, next_second, unique_id, unique_prefix
from tests.support.server import running_service

TOKEN = "s3cret-admin-token-123456"


@pytest.fixture
async def cached(
    make_client: ClientFactory, pg_url: str, redis_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on PostgreSQL and Redis, L1 on, with an admin token."""
    prefix = unique_prefix("hc")
    async with make_client(
        database_url=pg_url, redis_url=redis_url, cache_prefix=prefix, admin_token=TOKEN
    ) as client:
        yield client
    await forget_prefix(prefix)


async def test_a_result_read_says_revalidate_and_which_tier_answered(
    cached: httpx.AsyncClient,
) -> None:
    rid = unique_id()
    written = await cached.put(f"/results/{rid}", json={"a": 1})
    assert written.headers["cache-control"] == "no-store"

    shared = await cached.get(f"/results/{rid}")  # the write put it in Redis, not L1
    assert shared.headers["cache-control"] == "no-cache"
    assert shared.headers["cache-status"] == "service; hit; detail=shared"
    local = await cached.get(f"/results/{rid}")
    assert local.headers["cache-status"] == "service; hit; detail=l1"
    assert local.headers["x-cache"] == "HIT"
    revalidated = await cached.get(f"/results/{rid}", headers={"if-none-match": '"1"'})
    assert revalidated.status_code == 304
    assert revalidated.headers["cache-control"] == "no-cache"
    assert revalidated.headers["cache-status"] == "service; hit; detail=l1"
    head = await cached.head(f"/results/{rid}")
    assert head.headers["cache-control"] == "no-cache"

    # Not in any tier: from the database.
    await cached.post("/admin/cache/invalidate", json={"analysis_id": rid}, headers=_ADMIN)
    database = await cached.get(f"/results/{rid}")
    assert database.headers["cache-status"] == "service; fwd=miss"
    assert database.headers["x-cache"] == "MISS"

    page = await cached.get("/results?limit=2")
    assert page.headers["cache-control"] == "no-cache"


_ADMIN = {"authorization": f"Bearer {TOKEN}"}


async def test_errors_writes_and_admin_are_never_stored(cached: httpx.AsyncClient) -> None:
    rid = unique_id()
    answers = {
        "404 result": await cached.get(f"/results/{rid}"),
        "422 id": await cached.get("/results/a%20b"),
        "422 limit": await cached.get("/results?limit=0"),
        "404 path": await cached.get("/nowhere"),
        "405": await cached.post(f"/results/{rid}"),
        "201": await cached.put(f"/results/{rid}", json={"a": 1}),
        "412": await cached.put(f"/results/{rid}", json={"a": 2}, headers={"if-match": '"9"'}),
        "204": await cached.delete(f"/results/{rid}"),
        "admin 401": await cached.get("/admin/cache/stats"),
        "admin 200": await cached.get("/admin/cache/stats", headers=_ADMIN),
        "healthz": await cached.get("/healthz"),
        "readyz": await cached.get("/readyz"),
        "metrics": await cached.get("/metrics"),
    }
    assert {name: r.headers.get("cache-control") for name, r in answers.items()} == {
        name: "no-store" for name in answers
    }
    # A 404 found by a read still says which tier answered it.
    assert answers["404 result"].headers["cache-status"].startswith("service; ")


def test_the_policy_is_what_the_settings_say() -> None:
    assert cache_control(Settings()) == "no-cache"
    assert cache_control(Settings(http_max_age=60)) == "max-age=60"
    assert cache_control(Settings(http_s_maxage=0)) == "max-age=0, s-maxage=0"
    assert (
        cache_control(
            Settings(
                http_max_age=5,
                http_s_maxage=60,
                http_stale_while_revalidate=30,
                stale_if_error=300,
            )
        )
        == "max-age=5, s-maxage=60, stale-while-revalidate=30, stale-if-error=300"
    )
    env = {"HTTP_MAX_AGE": "10", "HTTP_STALE_WHILE_REVALIDATE": "20", "STALE_IF_ERROR": "30"}
    assert cache_control(Settings.from_environ(env, env_file=None)) == (
        "max-age=10, stale-while-revalidate=20, stale-if-error=30"
    )


async def test_configured_policy_on_reads_304s_and_pages(
    make_client: ClientFactory, database_url: str
) -> None:
    async with make_client(
        database_url=database_url, http_max_age=30, http_stale_while_revalidate=60
    ) as client:
        rid = unique_id()
        await client.put(f"/results/{rid}", json={"a": 1})
        policy = "max-age=30, stale-while-revalidate=60"
        for _ in range(2):  # the route, then the hit path
            assert (await client.get(f"/results/{rid}")).headers["cache-control"] == policy
        not_modified = await client.get(f"/results/{rid}", headers={"if-none-match": '"1"'})
        assert not_modified.status_code == 304
        assert not_modified.headers["cache-control"] == policy
        assert (await client.get("/results")).headers["cache-control"] == policy
        assert (await client.get("/results/x%20y")).headers["cache-control"] == "no-store"


def _http_date(rfc3339: str) -> str:
    """The HTTP date of the second an ``updated_at`` falls in."""
    return format_datetime(datetime.fromisoformat(rfc3339).replace(microsecond=0), usegmt=True)


async def test_last_modified_waits_for_its_second_to_end(client: httpx.AsyncClient) -> None:
    """During the second a version was written in, it is sent without Last-Modified,
    and If-Modified-Since cannot make it a 304; afterwards both work."""
    for _ in range(20):  # a write and two reads within one second (a few tries at most)
        rid = unique_id()
        await next_second()
        written = await client.put(f"/results/{rid}", json={"a": 1})
        since = _http_date(written.json()["updated_at"])
        read = await client.get(f"/results/{rid}")
        revalidated = await client.get(f"/results/{rid}", headers={"if-modified-since": since})
        if int(time.time()) == int(
            datetime.fromisoformat(written.json()["updated_at"]).timestamp()
        ):
            break
    else:
        pytest.fail("the machine is too slow to write and read within one second")
    assert "last-modified" not in written.headers
    assert "last-modified" not in read.headers
    assert revalidated.status_code == 200

    await next_second()
    later = await client.get(f"/results/{rid}")
    assert later.headers["last-modified"] == since
    same = await client.get(f"/results/{rid}", headers={"if-modified-since": since})
    assert same.status_code == 304


async def test_two_versions_in_one_second_never_revalidate_as_one(
    client: httpx.AsyncClient,
) -> None:
    """Version 1 and version 2 written within one second share an HTTP date: a client
    holding version 1 with that date must get version 2, not a 304."""
    for _ in range(20):
        rid = unique_id()
        await next_second()
        first = await client.put(f"/results/{rid}", json={"v": 1})
        second = await client.put(f"/results/{rid}", json={"v": 2})
        since = _http_date(first.json()["updated_at"])
        if since == _http_date(second.json()["updated_at"]):
            break
    else:
        pytest.fail("the machine is too slow to write twice within one second")
    answer = await client.get(f"/results/{rid}", headers={"if-modified-since": since})
    assert answer.status_code == 200
    assert answer.json() == {"v": 2}


async def test_last_modified_is_never_later_than_date_on_a_real_server(
    database_url: str,
) -> None:
    """Under ``service serve``'s protocol, writes and reads across second boundaries:
    every read's Last-Modified is at most its Date. Each write is read during its own
    second, and again once that second has ended, when Last-Modified must be sent.

    (Reads at a steady pace used to be all this test made: once hits got fast enough
    for a write and its reads to take an eighth of a second, every second boundary
    could fall between the last read of one write and the next write.)"""
    async with (
        running_service({"DATABASE_URL": database_url}) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        rid = unique_id()

        async def read() -> bool:
            got = await client.get(f"/results/{rid}")
            date = parsedate_to_datetime(got.headers["date"])
            if "last-modified" not in got.headers:
                return False
            assert parsedate_to_datetime(got.headers["last-modified"]) <= date
            return True

        for _ in range(3):
            await client.put(f"/results/{rid}", json={"t": time.time()})
            written = time.time()
            for _ in range(3):
                await read()
                await asyncio.sleep(0.02)
            await asyncio.sleep(math.floor(written) + 1.01 - time.time())
            assert await read(), "a version is sent with Last-Modified once its second ends"
