"""PerformanceMonitor and the /metrics exposition, through real apps and real servers.

Every scrape is parsed line by line (``name{labels} value``) and checked for exact
values: the series stay bounded whatever paths and methods arrive, each cache lookup
moves exactly the counter the ``X-Cache`` header names, a Redis outage shows in the
error counter and the breaker gauge, and ``promtool`` accepts what we serve.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.utils import HIREDIS_AVAILABLE
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service._version import __version__
from service.app import ServiceApp, create_app
from service.config import Settings
from service.monitoring.exposition import MetricsListener
from service.monitoring.performance import (
    LATENCY_BUCKETS,
    UNMATCHED,
    MonitoringMiddleware,
    PerformanceMonitor,
)
from tests.helpers import (
    Samples,
    closed_port,
    forget_prefix,
    get_or_zero,
    parse,
    unique_id,
    unique_prefix,
)
from tests.support.private_redis import private_redis

RESULT_ENDPOINT = "/results/{analysis_id}"
IDENTITY = {"accept-encoding": "identity"}
"""Scrapes ask for identity, so that they never move the compression counters."""
ADMIN_TOKEN = "monitoring-test-admin-token"


def get(samples: Samples, name: str, /, **labels: str) -> float:
    """The value of the series ``name{labels}`` (exactly those labels)."""
    key = (name, frozenset(labels.items()))
    if key in samples:
        return samples[key]
    present = [dict(lbl) for n, lbl in samples if n == name]
    raise AssertionError(f"no series {name}{labels}; present: {present}")


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every series named ``name``."""
    return [dict(labels) for n, labels in samples if n == name]


def by_labels(labels: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(labels.items())


def has(samples: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics", headers=IDENTITY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def render(monitor: PerformanceMonitor) -> Samples:
    body, _ = monitor.render()
    return parse(body.decode())


def monitor_of(app: Starlette) -> PerformanceMonitor:
    """The PerformanceMonitor that ``create_app`` gave its MonitoringMiddleware."""
    assert isinstance(app, ServiceApp)
    for middleware in app.outer:
        cls: object = middleware.cls
        if cls is MonitoringMiddleware:
            monitor = middleware.kwargs["monitor"]
            assert isinstance(monitor, PerformanceMonitor)
            return monitor
    raise AssertionError("create_app added no MonitoringMiddleware")


@asynccontextmanager
async def running_app(
    **overrides: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, PerformanceMonitor]]:
    """The real app (lifespan run), an in-process client, and its monitor."""
    app = create_app(Settings(**overrides))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client, monitor_of(app)


@asynccontextmanager
async def shared_redis_prefix() -> AsyncIterator[str]:
    """A CACHE_PREFIX of this test's own on the shared Redis; its keys deleted afterwards."""
    prefix = unique_prefix("mon")
    try:
        yield prefix
    finally:
        await forget_prefix(prefix)


def deltas(before: Samples, after: Samples, name: str, label: str) -> dict[str, float]:
    """By the value of ``label``: how much each series ``name`` grew between two scrapes."""
    return {
        dict(labels)[label]: value - before.get((n, labels), 0.0)
        for (n, labels), value in after.items()
        if n == name
    }


# 1. Bounded series.


async def test_series_stay_bounded_whatever_ids_and_paths_arrive(pg_url: str) -> None:
    async with running_app(database_url=pg_url) as (client, _):
        # Warm up: every series this test will touch exists before the first count.
        assert (await client.get(f"/results/{unique_id('warm')}")).status_code == 404
        assert (await client.get(f"/x/{uuid.uuid4()}")).status_code == 404
        await scrape(client)
        before = await scrape(client)
        counted_before = series(before, "request_duration_seconds_count")
        assert sorted(counted_before, key=by_labels) == sorted(
            [
                {"method": "GET", "endpoint": RESULT_ENDPOINT},
                {"method": "GET", "endpoint": UNMATCHED},
                {"method": "GET", "endpoint": "/metrics"},
            ],
            key=by_labels,
        )

        for _ in range(200):
            response = await client.get(f"/results/{unique_id('absent')}")
            assert response.status_code == 404
        for _ in range(1000):
            response = await client.get(f"/x/{uuid.uuid4()}")
            assert response.status_code == 404
        after = await scrape(client)

    counted_after = series(after, "request_duration_seconds_count")
    assert sorted(counted_after, key=by_labels) == sorted(counted_before, key=by_labels)
    assert len(series(after, "request_duration_seconds_bucket")) == len(
        series(before, "request_duration_seconds_bucket")
    )
    assert len(series(after, "responses_total")) == len(series(before, "responses_total"))
    grown = deltas(before, after, "request_duration_seconds_count", "endpoint")
    assert grown == {RESULT_ENDPOINT: 200, UNMATCHED: 1000, "/metrics": 1}
    for endpoint, n in ((RESULT_ENDPOINT, 200), (UNMATCHED, 1000)):
        labels = {"method": "GET", "endpoint": endpoint, "status_class": "4xx"}
        assert (
            get(after, "responses_total", **labels) - get(before, "responses_total", **labels) == n
        )
    assert not any(
        "/x/" in value or "absent-" in value for _, labels in after for _, value in labels
    )


async def test_unknown_methods_share_the_other_label(pg_url: str) -> None:
    async with running_app(database_url=pg_url) as (client, _):
        first = await client.request("PURGE", f"/results/{unique_id('purge')}")
        second = await client.request("BREW", f"/results/{unique_id('brew')}")
        third = await client.request("PURGE", f"/x/{uuid.uuid4()}")
        assert (first.status_code, second.status_code, third.status_code) == (405, 405, 404)
        samples = await scrape(client)

    counted = series(samples, "request_duration_seconds_count")
    # The scrape's own series exists (made as it arrived) but counts it only once it ends.
    methods = {labels["method"] for labels in counted if labels["endpoint"] != "/metrics"}
    assert methods == {"other"}
    assert get(samples, "request_duration_seconds_count", method="GET", endpoint="/metrics") == 0
    assert (
        get(samples, "request_duration_seconds_count", method="other", endpoint=RESULT_ENDPOINT)
        == 2
    )
    assert get(samples, "request_duration_seconds_count", method="other", endpoint=UNMATCHED) == 1
    assert (
        get(
            samples, "responses_total", method="other", endpoint=RESULT_ENDPOINT, status_class="4xx"
        )
        == 2
    )


# 2. Hits and misses.


@pytest.mark.parametrize("hit_path", [True, False], ids=["hit-path", "full-stack"])
async def test_l1_hits_are_timed_and_counted_in_the_routes_series(
    pg_url: str, hit_path: bool
) -> None:
    """Reads the hit path answers land in the same series as the route's, one each."""
    app = create_app(Settings(database_url=pg_url), hit_path=hit_path)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            rid = unique_id("series")
            assert (await client.put(f"/results/{rid}", json={"n": 1})).status_code == 201
            assert (await client.get(f"/results/{rid}")).status_code == 200  # fills L1
            before = await scrape(client)
            for method, headers in [("GET", {}), ("GET", {"if-none-match": '"1"'})] * 3:
                await client.request(method, f"/results/{rid}", headers=headers)
            assert (await client.head(f"/results/{rid}")).status_code == 200
            after = await scrape(client)

    def grown(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    labels = {"method": "GET", "endpoint": RESULT_ENDPOINT}
    assert grown("responses_total", **labels, status_class="2xx") == 3
    assert grown("responses_total", **labels, status_class="3xx") == 3
    assert grown("request_duration_seconds_count", **labels) == 6
    head = {"method": "HEAD", "endpoint": RESULT_ENDPOINT, "status_class": "2xx"}
    assert grown("responses_total", **head) == 1
    assert get(after, "requests_in_progress") == get(before, "requests_in_progress")


@pytest.mark.parametrize("hit_path", [True, False], ids=["write-path", "full-stack"])
async def test_writes_are_timed_and_counted_in_the_routes_series(
    pg_url: str, hit_path: bool
) -> None:
    """Writes the write path answers, and those it hands to the route, land in the
    route's series, one each."""
    app = create_app(Settings(database_url=pg_url), hit_path=hit_path)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            rid = unique_id("writes")
            before = await scrape(client)
            statuses = [
                (await client.put(f"/results/{rid}", json={"n": n})).status_code for n in range(3)
            ]
            statuses.append(
                (
                    await client.put(f"/results/{rid}", json={}, headers={"if-match": '"9"'})
                ).status_code
            )
            statuses.append((await client.put(f"/results/{rid}", content=b"{}")).status_code)
            after = await scrape(client)
    assert statuses == [201, 200, 200, 412, 415]

    def grown(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    labels = {"method": "PUT", "endpoint": RESULT_ENDPOINT}
    assert grown("responses_total", **labels, status_class="2xx") == 3
    assert grown("responses_total", **labels, status_class="4xx") == 2
    assert grown("request_duration_seconds_count", **labels) == 5
    assert get(after, "requests_in_progress") == get(before, "requests_in_progress")


@pytest.mark.parametrize("with_redis", [False, True], ids=["memory", "redis"])
async def test_hits_and_misses_move_exactly_the_counters_x_cache_names(
    pg_url: str, redis_url: str, with_redis: bool
) -> None:
    async with shared_redis_prefix() as prefix:
        config: dict[str, Any] = {"database_url": pg_url, "cache_prefix": prefix}
        if with_redis:
            config["redis_url"] = redis_url
        async with running_app(**config) as (client, monitor):
            rid = unique_id("hit")
            assert (await client.put(f"/results/{rid}", json={"n": 1})).status_code == 201
            before = await scrape(client)
            reads = [
                await client.get(f"/results/{rid}"),
                await client.get(f"/results/{rid}"),
                await client.get(f"/results/{unique_id('miss')}"),
            ]
            assert [r.status_code for r in reads] == [200, 200, 404]
            x_cache = [r.headers["x-cache"] for r in reads]
            after = await scrape(client)

            monitor.track_cache("custom", True)
            custom = render(monitor)

    hit_count, miss_count = x_cache.count("HIT"), x_cache.count("MISS")
    assert hit_count + miss_count == 3
    hits = deltas(before, after, "cache_hits_total", "cache_type")
    misses = deltas(before, after, "cache_misses_total", "cache_type")
    assert hits["results"] == hit_count
    assert misses["results"] == miss_count
    if with_redis:
        # A write drops L1 and fills Redis: the first read comes from Redis and fills L1,
        # the second from L1; the unknown id misses both tiers and goes to the database.
        assert x_cache == ["HIT", "HIT", "MISS"]
        assert hits == {"results": 2, "l1": 1, "redis": 1}
        assert misses == {"results": 1, "l1": 2, "redis": 1}
        assert hits["l1"] + hits["redis"] == hit_count
        assert misses["redis"] == miss_count
    else:
        # L1 in front of process memory: a write fills the memory tier, the first read
        # comes from there and fills L1, the second from L1; no Redis series at all.
        assert x_cache == ["HIT", "HIT", "MISS"]
        assert hits == {"results": 2, "l1": 1}
        assert misses == {"results": 1, "l1": 2}
        assert not has(after, "cache_hits_total", cache_type="redis")
    assert not has(after, "cache_hits_total", cache_type="custom")
    assert get(custom, "cache_hits_total", cache_type="custom") == 1
    assert not has(custom, "cache_misses_total", cache_type="custom")
    # track_cache adds to, never replaces, what the result cache itself reports.
    assert get(custom, "cache_hits_total", cache_type="results") == get(
        after, "cache_hits_total", cache_type="results"
    )


# 3. Redis outage.


async def test_concurrent_misses_of_one_id_are_each_counted(pg_url: str) -> None:
    """Reads that wait on another read's database load are misses too, as X-Cache says."""
    async with running_app(database_url=pg_url) as (client, _):
        before = await scrape(client)
        rid = unique_id("crowd")
        answers = await asyncio.gather(*(client.get(f"/results/{rid}") for _ in range(5)))
        after = await scrape(client)
    assert [a.headers["x-cache"] for a in answers] == ["MISS"] * 5
    assert deltas(before, after, "cache_misses_total", "cache_type") == {"results": 5, "l1": 5}
    assert deltas(before, after, "cache_hits_total", "cache_type").get("results", 0) == 0


@pytest.mark.redis
async def test_a_redis_outage_moves_the_error_counter_and_opens_the_breaker(
    pg_url: str,
) -> None:
    async with private_redis() as server:
        config = {
            "database_url": pg_url,
            "redis_url": server.url,
            "redis_timeout": 0.2,
            "cache_prefix": f"mon{uuid.uuid4().hex[:8]}",
            "admin_token": ADMIN_TOKEN,
        }
        async with running_app(**config) as (client, _):
            assert (await client.get(f"/results/{unique_id('up')}")).status_code == 404
            before = await scrape(client)
            assert get(before, "cache_breaker_state", cache_type="redis") == 0
            errors_before = get(before, "cache_errors_total", cache_type="redis")
            assert errors_before == 0

            await server.stop()
            for _ in range(5):  # each read misses Redis and then fails to fill it: 2 errors
                response = await client.get(f"/results/{unique_id('down')}")
                assert response.status_code == 404, "reads go on from PostgreSQL"
            after = await scrape(client)
            stats = await client.get(
                "/admin/cache/stats", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert stats.status_code == 200, stats.text

    assert get(after, "cache_breaker_state", cache_type="redis") == 2
    errors = get(after, "cache_errors_total", cache_type="redis")
    assert errors >= 5, "the breaker opens after 5 failures in a row"
    assert errors == stats.json()["cache"]["errors"]
    assert stats.json()["cache"]["breaker"] == "open"


# 4. Status classes.


async def test_responses_are_counted_by_status_class(pg_url: str) -> None:
    async with running_app(database_url=pg_url) as (client, _):
        assert (await client.get("/healthz")).status_code == 200
        rid = unique_id("class")
        assert (await client.put(f"/results/{rid}", json={"n": 1})).status_code == 201
        assert (await client.get(f"/results/{rid}")).status_code == 200
        assert (await client.get(f"/results/{unique_id('nope')}")).status_code == 404
        samples = await scrape(client)

    responses = {
        (s["method"], s["endpoint"], s["status_class"]): get(samples, "responses_total", **s)
        for s in series(samples, "responses_total")
    }
    assert responses == {
        ("GET", "/healthz", "2xx"): 1,
        ("PUT", RESULT_ENDPOINT, "2xx"): 1,
        ("GET", RESULT_ENDPOINT, "2xx"): 1,
        ("GET", RESULT_ENDPOINT, "4xx"): 1,
    }


async def test_an_endpoint_that_raises_is_counted_as_5xx() -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def fine(request: Request) -> Response:
        return PlainTextResponse("ok")

    monitor = PerformanceMonitor()
    inner = Starlette(routes=[Route("/boom/{n:int}", boom), Route("/fine", fine)])
    app = monitor.middleware(inner)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/boom/1")).status_code == 500
        assert (await client.get("/boom/2")).status_code == 500
        assert (await client.get("/fine")).status_code == 200
    samples = render(monitor)
    assert (
        get(samples, "responses_total", method="GET", endpoint="/boom/{n}", status_class="5xx") == 2
    )
    assert get(samples, "responses_total", method="GET", endpoint="/fine", status_class="2xx") == 1
    assert len(series(samples, "responses_total")) == 2
    assert get(samples, "request_duration_seconds_count", method="GET", endpoint="/boom/{n}") == 2
    assert get(samples, "requests_in_progress") == 0


async def test_an_app_that_fails_before_answering_counts_as_5xx() -> None:
    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("no response at all")

    monitor = PerformanceMonitor()
    transport = httpx.ASGITransport(app=monitor.middleware(raw), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/anything")).status_code == 500
    samples = render(monitor)
    labels = {"method": "POST", "endpoint": UNMATCHED}
    assert get(samples, "responses_total", status_class="5xx", **labels) == 1
    assert get(samples, "request_duration_seconds_count", **labels) == 1
    assert get(samples, "requests_in_progress") == 0


async def test_requests_in_progress_counts_the_request_being_served() -> None:
    monitor = PerformanceMonitor()
    seen: list[float] = []

    async def inside(request: Request) -> Response:
        seen.append(get(render(monitor), "requests_in_progress"))
        return PlainTextResponse("ok")

    app = monitor.middleware(Starlette(routes=[Route("/inside", inside)]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/inside")).status_code == 200
    assert seen == [1]
    assert get(render(monitor), "requests_in_progress") == 0


# 5. Histogram.


def test_histogram_buckets_count_and_sum_are_exact() -> None:
    monitor = PerformanceMonitor()
    monitor.track_request("GET", "/x", 0.0003)
    samples = render(monitor)
    labels = {"method": "GET", "endpoint": "/x"}
    buckets = {
        s["le"]: get(samples, "request_duration_seconds_bucket", **s)
        for s in series(samples, "request_duration_seconds_bucket")
    }
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets["0.0001"] == 0
    assert buckets["0.00025"] == 0
    assert buckets["0.0005"] == 1
    assert buckets["10.0"] == 1
    assert buckets["+Inf"] == 1
    assert get(samples, "request_duration_seconds_count", **labels) == 1
    assert get(samples, "request_duration_seconds_sum", **labels) == 0.0003

    # A second observation takes the cached path of observe(): it must land too.
    monitor.track_request("GET", "/x", 2.0)
    samples = render(monitor)
    assert get(samples, "request_duration_seconds_bucket", le="0.0005", **labels) == 1
    assert get(samples, "request_duration_seconds_bucket", le="1.0", **labels) == 1
    assert get(samples, "request_duration_seconds_bucket", le="2.5", **labels) == 2
    assert get(samples, "request_duration_seconds_count", **labels) == 2
    assert get(samples, "request_duration_seconds_sum", **labels) == pytest.approx(2.0003)


# 6. Pool.


async def test_pool_metrics_are_read_at_scrape_time(pg_url: str) -> None:
    async with running_app(database_url=pg_url, db_pool_size=3, db_max_overflow=2) as (
        client,
        _,
    ):
        before = await scrape(client)
        assert get(before, "db_pool_size") == 3
        assert get(before, "db_pool_max_overflow") == 2
        assert get(before, "db_pool_checked_out") == 0
        assert get(before, "db_pool_waiting") == 0
        assert get(before, "db_pool_timeouts_total") == 0
        acquired = get_or_zero(before, "db_pool_acquire_seconds_count")
        reads = get_or_zero(before, "db_query_duration_seconds_count", operation="read")

        assert (await client.get(f"/results/{unique_id('pool')}")).status_code == 404
        after = await scrape(client)

    assert get(after, "db_pool_acquire_seconds_count") == acquired + 1
    assert get(after, "db_query_duration_seconds_count", operation="read") == reads + 1
    assert get(after, "db_query_duration_seconds_sum", operation="read") > get_or_zero(
        before, "db_query_duration_seconds_sum", operation="read"
    )
    assert get(after, "db_pool_idle") >= 1
    assert get(after, "db_pool_checked_out") == 0


# 7. Compression.


async def test_compression_bytes_in_and_out(pg_url: str) -> None:
    document = {"rows": [{"i": i, "text": "a fairly repetitive value"} for i in range(40)]}
    async with running_app(database_url=pg_url) as (client, _):
        rid = unique_id("gzip")
        assert (await client.put(f"/results/{rid}", json=document)).status_code == 201
        before = await scrape(client)
        assert not has(before, "compression_bytes_in_total", encoding="gzip")
        async with client.stream(
            "GET", f"/results/{rid}", headers={"accept-encoding": "gzip"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-encoding"] == "gzip"
            wire = b"".join([chunk async for chunk in response.aiter_raw()])
        after = await scrape(client)

    plain = gzip.decompress(wire)
    assert len(plain) > 500
    bytes_in = get(after, "compression_bytes_in_total", encoding="gzip")
    bytes_out = get(after, "compression_bytes_out_total", encoding="gzip")
    assert bytes_in == len(plain)
    assert bytes_out == len(wire)
    assert bytes_in > bytes_out > 0


async def test_maintenance_statements_are_counted_by_operation_and_outcome(
    sqlite_url: str,
) -> None:
    token = "monitoring-admin-token-01"
    async with running_app(database_url=sqlite_url, admin_token=token) as (client, _):
        before = await scrape(client)
        assert not has(
            before, "db_maintenance_statements_total", operation="analyze", outcome="done"
        )
        response = await client.post(
            "/admin/db/maintenance",
            json={"operation": "analyze"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text
        ran = len(response.json()["tables"])
        after = await scrape(client)

    assert ran >= 2  # one ANALYZE per table, then PRAGMA optimize
    labels = {"operation": "analyze", "outcome": "done"}
    assert get(after, "db_maintenance_statements_total", **labels) == ran


# 8. build_info.


async def test_build_info() -> None:
    samples = render(PerformanceMonitor())
    assert series(samples, "build_info") == [
        {
            "version": __version__,
            "python": ".".join(map(str, sys.version_info[:3])),
            "hiredis": str(bool(HIREDIS_AVAILABLE)).lower(),
            "uvloop": str(type(asyncio.get_running_loop()).__module__.startswith("uvloop")).lower(),
        }
    ]
    assert list(v for (n, _), v in samples.items() if n == "build_info") == [1]


# 9. promtool.


@pytest.mark.tools
async def test_promtool_accepts_a_real_scrape(pg_url: str, redis_url: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install prometheus")
    async with shared_redis_prefix() as prefix:
        config = {"database_url": pg_url, "redis_url": redis_url, "cache_prefix": prefix}
        async with running_app(**config) as (client, monitor):
            rid = unique_id("promtool")
            big = {"rows": [{"i": i, "text": "compressible"} for i in range(60)]}
            assert (await client.put(f"/results/{rid}", json=big)).status_code == 201
            for _ in range(3):
                await client.get(f"/results/{rid}", headers={"accept-encoding": "gzip"})
            await client.get(f"/results/{unique_id('none')}")
            await client.get(f"/x/{uuid.uuid4()}")
            await client.request("PURGE", f"/results/{rid}")
            monitor.track_cache("custom", False)
            response = await client.get("/metrics", headers=IDENTITY)
    assert response.status_code == 200
    text = response.text
    for name in ("cache_hits_total", "cache_breaker_state", "db_pool_size", "responses_total"):
        assert f"\n{name}" in text, name
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=response.content,
        capture_output=True,
        timeout=30,
        check=False,
    )
    report = (checked.stdout + checked.stderr).decode(errors="replace")
    assert checked.returncode == 0, report
    assert report.strip() == "", report


# 10. gzip on the API port.


async def test_metrics_are_gzip_compressed_when_asked(pg_url: str) -> None:
    async with running_app(database_url=pg_url) as (client, _):
        await client.get(f"/results/{unique_id('gz')}")
        async with client.stream("GET", "/metrics", headers={"accept-encoding": "gzip"}) as r:
            assert r.status_code == 200
            assert r.headers["content-encoding"] == "gzip"
            wire = b"".join([chunk async for chunk in r.aiter_raw()])
    samples = parse(gzip.decompress(wire).decode())
    assert (
        get(samples, "request_duration_seconds_count", method="GET", endpoint=RESULT_ENDPOINT) == 1
    )
    assert len(series(samples, "build_info")) == 1


# 11. METRICS_PORT.


async def test_metrics_port_moves_metrics_off_the_api_port(pg_url: str) -> None:
    port = closed_port()
    async with running_app(database_url=pg_url, metrics_port=port) as (client, monitor):
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get(f"/results/{unique_id('port')}")).status_code == 404
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
            response = await scraper.get("/metrics", headers=IDENTITY)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        samples = parse(response.text)
        # Same monitor as the API's: it saw the API's requests, including the 404 /metrics.
        assert (
            get(samples, "request_duration_seconds_count", method="GET", endpoint=RESULT_ENDPOINT)
            == 1
        )
        assert (
            get(samples, "responses_total", method="GET", endpoint=UNMATCHED, status_class="4xx")
            == 1
        )
        assert get(render(monitor), "db_pool_size") == get(samples, "db_pool_size")
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as late:
            await late.get(f"http://127.0.0.1:{port}/metrics")


async def test_metrics_port_zero_starts_and_leaves_the_api_without_metrics(pg_url: str) -> None:
    async with running_app(database_url=pg_url, metrics_port=0) as (client, _):
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200


async def test_metrics_listener_over_tcp() -> None:
    monitor = PerformanceMonitor()
    monitor.track_request("GET", "/seen", 0.001)
    async with MetricsListener(monitor, "127.0.0.1", 0) as listener:
        assert listener.port != 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}") as http:
            plain = await http.get("/metrics", headers=IDENTITY)
            query = await http.get("/metrics?x=1", headers=IDENTITY)
            head = await http.head("/metrics", headers=IDENTITY)
            async with http.stream("GET", "/metrics", headers={"accept-encoding": "gzip"}) as r:
                zipped_headers = r.headers
                wire = b"".join([chunk async for chunk in r.aiter_raw()])
            missing = await http.get("/other")
            root = await http.get("/")
            post = await http.post("/metrics")
            post_body = await http.post("/metrics", content=b"x" * 10_000)
            delete = await http.delete("/metrics")

    assert plain.status_code == 200
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-length"] == str(len(plain.content))
    assert (
        get(parse(plain.text), "request_duration_seconds_count", method="GET", endpoint="/seen")
        == 1
    )
    assert query.status_code == 200

    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == plain.headers["content-length"]

    assert zipped_headers["content-encoding"] == "gzip"
    assert zipped_headers["vary"] == "Accept-Encoding"
    assert zipped_headers["content-length"] == str(len(wire))
    assert parse(gzip.decompress(wire).decode()) == parse(plain.text)

    assert (missing.status_code, root.status_code) == (404, 404)
    for refused in (post, post_body, delete):
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"


async def test_metrics_listener_ignores_garbage_and_keeps_serving() -> None:
    async with MetricsListener(PerformanceMonitor(), "127.0.0.1", 0) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"not http at all\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 404 ")

        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.close()  # hangs up before sending anything
        await writer.wait_closed()

        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{listener.port}/metrics")
        assert response.status_code == 200


# 12. Independent monitors.


async def test_two_monitors_share_nothing() -> None:
    first, second = PerformanceMonitor(), PerformanceMonitor()
    assert first.registry is not second.registry
    empty = render(second)

    first.track_request("GET", "/only-first", 0.01)
    first.track_cache("only-first", True)
    first.time_query("read", 0.002)
    first.count_response("GET", "/only-first", 200)

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = first.middleware(Starlette(routes=[Route("/via-middleware", ok)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/via-middleware")).status_code == 200

    recorded = render(first)
    assert (
        get(recorded, "request_duration_seconds_count", method="GET", endpoint="/only-first") == 1
    )
    assert (
        get(recorded, "request_duration_seconds_count", method="GET", endpoint="/via-middleware")
        == 1
    )
    assert get(recorded, "cache_hits_total", cache_type="only-first") == 1
    assert get(recorded, "db_query_duration_seconds_count", operation="read") == 1

    untouched = render(second)
    assert untouched == empty
    names = {name for name, _ in untouched}
    assert names == {"build_info", "requests_in_progress"}, names
    assert b"only-first" not in second.render()[0]
    assert b"via-middleware" not in second.render()[0]
