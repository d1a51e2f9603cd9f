"""``python -m bench``: every performance claim of the service, measured side by side.

Starts the service (uvicorn, uvloop, and the HTTP protocol ``service serve`` runs, no
access log) pinned to core 0 against a fresh PostgreSQL database, drives it with wrk
pinned to core 1, and prints two
Markdown tables: the scenarios (medians of interleaved runs, with spread, latency and
responses by status) and the goals, each met, missed or not built yet. The tables are
also written to ``--output``. ``--smoke`` runs everything once, briefly: it checks that
the benchmark works, not how fast the service is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import redis.asyncio as aioredis

from bench import wrk
from bench.app import CASHEWS_INSTALLED, DOCUMENT_ID
from bench.cpu import cpu_seconds, postmaster_of, wait_until_idle
from bench.in_process import monitoring_cost
from bench.report import Goal, Scenario, goal_table, ratio, scenario_table
from service.config import Settings
from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore

STAMPEDE_ID = "bench-cold"
LIST_ROWS = 1000
MISS_IDS = 1000
"""The miss scenario spreads its GETs over this many copies of the document."""
PUT_IDS = 1000
"""The PUT scenarios (the service's and the raw one) spread their writes over this many ids."""
SERVICE_HTTP = "service.server:GuardedHttpToolsProtocol"
"""The HTTP protocol ``service serve`` runs (uvicorn's httptools one, with request-head
limits, answering L1 hits itself); ``asgi_plain`` runs on uvicorn's own instead."""
CHROME = "gzip, deflate, br, zstd"
"""The Accept-Encoding a current browser sends."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per scenario")
    parser.add_argument("--seconds", type=float, default=8, help="length of one wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--saturation-connections", type=int, default=1024)
    parser.add_argument("--stampede", type=int, default=1000, help="concurrent cold GETs")
    parser.add_argument("--doc-kb", type=float, default=32, help="size of the result document")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="an existing database on the server; the bench creates and drops its own beside it",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis the service caches in; the bench removes the keys it made",
    )
    parser.add_argument("--output", type=Path, default=Path("bench/results/latest.md"))
    parser.add_argument("--smoke", action="store_true", help="one short run of everything")
    parser.add_argument(
        "--only",
        type=lambda text: [key.strip() for key in text.split(",") if key.strip()],
        default=[],
        help="comma-separated scenario keys to run (say, many rounds of the hot-path rows); "
        "the stampede and saturation checks run only without it",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(scenarios()) - {"saturation"})
    if unknown:
        parser.error(f"--only: unknown scenarios {', '.join(unknown)}")
    if args.smoke:
        args.runs, args.seconds = 1, 1
        args.saturation_connections, args.stampede = 128, 100
    return args


def document(size_kb: float) -> dict[str, Any]:
    """A realistic analysis result: metadata, metrics and rows, about ``size_kb`` KB of JSON."""
    doc: dict[str, Any] = {
        "analysis_id": DOCUMENT_ID,
        "model": {"name": "gradient-boosting", "version": "4.2.1", "seed": 1234},
        "metrics": {"auc": 0.9312, "precision": 0.8821, "recall": 0.8410, "f1": 0.8611},
        "created_by": "bench",
        "rows": [],
    }
    n = 0
    while len(orjson.dumps(doc)) < size_kb * 1000:
        doc["rows"].append(
            {
                "id": n,
                "label": f"segment-{n % 17}",
                "score": round((n * 7919 % 1000) / 1000, 3),
                "features": {"age": 20 + n % 50, "region": ["eu", "us", "apac"][n % 3]},
                "flags": [n % 2 == 0, n % 3 == 0],
            }
        )
        n += 1
    return doc


@contextlib.contextmanager
def bench_database(admin_url: str) -> Iterator[str]:
    """A fresh database beside ``admin_url``'s, dropped afterwards."""
    name = f"svc_bench_{uuid.uuid4().hex[:8]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def seed(url: str, doc: dict[str, Any]) -> None:
    async with ConnectionPool(url) as pool:
        await upgrade(pool)
        store = ResultStore(pool)
        await store.put(DOCUMENT_ID, doc)
        await store.put(STAMPEDE_ID, doc)
        for n in range(LIST_ROWS):
            await store.put(f"bench-row-{n:05d}", {"n": n, "score": n / LIST_ROWS})
        for n in range(1, MISS_IDS + 1):
            await store.put(f"bench-miss-{n}", doc)


async def postmaster(url: str) -> int | None:
    """The process id of the PostgreSQL cluster's postmaster (a backend's parent), or
    None when the cluster runs on another machine (or in a container of its own)."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        return await asyncio.to_thread(postmaster_of, backend)  # while the backend runs
    finally:
        await conn.close()


async def settle_writes(url: str) -> None:
    """Before a run of writes: the results table vacuumed and a checkpoint taken, so
    every such run starts from the same state. Each run rewrites hundreds of megabytes
    of rows and WAL; left to themselves, a checkpoint (its flush, then a full-page image
    for each page first written after it) and an autovacuum of the rewritten rows land
    in whichever write run is going on, and the PUT ratio read 0.73 to 0.97 from one
    bench to the next."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("VACUUM results")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


@contextlib.contextmanager
def cache_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this run's own; its keys are removed from Redis afterwards."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"

    async def forget() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            batch = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            for start in range(0, len(batch), 1000):
                await client.unlink(*batch[start : start + 1000])
        finally:
            await client.aclose()

    try:
        yield prefix
    finally:
        asyncio.run(forget())


SERVER_PIDS: dict[str, int] = {}
"""The process serving each base URL (for its CPU time)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server(
    url: str,
    redis_url: str,
    prefix: str,
    port: int,
    log: Path,
    *,
    http: str = SERVICE_HTTP,
    pool_size: int = 30,
) -> Iterator[str]:
    """uvicorn serving bench.app with the ``http`` protocol, pinned to core 0, until the
    block ends."""
    # 30 connections, as many as the raw asyncpg pool keeps; the engine-default row shows
    # the default sizes (20 + 10 overflow) under the same load.
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "CACHE_PREFIX": prefix,
        "LOG_LEVEL": "warning",
        "MIGRATE_ON_START": "false",
        "DB_POOL_SIZE": str(pool_size),
        "DB_MAX_OVERFLOW": "0",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.app:create_bench_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        http,
        "--no-server-header",
        "--no-access-log",
        "--log-level",
        "warning",
        "--backlog",
        "4096",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", "0", *command], env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    SERVER_PIDS[base] = process.pid
    with running(process, base, log):
        yield base


@contextlib.contextmanager
def running(process: subprocess.Popen[bytes], base: str, log: Path) -> Iterator[None]:
    """Wait until the server at ``base`` is ready; stop it when the block ends."""
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not get ready:\n{log.read_text()}")
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def stampede(base: str, count: int) -> tuple[int, dict[int, int]]:
    """``count`` concurrent GETs of one cold key: (database queries run, statuses)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        before = (await client.get("/bench/queries")).json()["queries"]
        start = asyncio.Event()

        async def one() -> int:
            await start.wait()
            return (await client.get(f"/results/{STAMPEDE_ID}")).status_code

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.sleep(0.2)
        start.set()
        codes = await asyncio.gather(*tasks)
        after = (await client.get("/bench/queries")).json()["queries"]
    statuses: dict[int, int] = {}
    for code in codes:
        statuses[code] = statuses.get(code, 0) + 1
    return after - before, dict(sorted(statuses.items()))


def scenarios() -> dict[str, Scenario]:
    rows = [
        Scenario("asgi", "raw ASGI callable, same bytes, prebuilt headers (the server's limit)"),
        Scenario(
            "asgi_plain",
            "the same callable on uvicorn's own HTTP protocol (no request-head limits)",
            "asgi",
        ),
        Scenario(
            "asgi_hit",
            "raw ASGI callable, same bytes, the hit's own headers, prebuilt",
            "asgi",
        ),
        Scenario("bare", "bare Starlette endpoint, same bytes", "asgi"),
        Scenario(
            "cashews",
            "cashews @cache on the same Redis, bare endpoint (a Redis GET every request)",
            "bare",
            built=CASHEWS_INSTALLED,
            note="cashews is not installed: pip install -e '.[bench]'",
        ),
        Scenario("hit_l1", "GET hit, L1 (in process), Redis behind", "bare"),
        Scenario("hit_redis", "GET hit, Redis only (L1_MAX_BYTES=0)", "bare"),
        Scenario(
            "miss",
            f"GET miss: Redis GET, PostgreSQL, compare-and-set fill ({MISS_IDS:,} ids)",
            "bare",
        ),
        Scenario(
            "get", f"GET, cache off (no room: PostgreSQL every time, {MISS_IDS:,} ids)", "raw"
        ),
        Scenario("raw", "raw asyncpg pool, same query, bare endpoint (the driver's limit)", "bare"),
        Scenario("engine", "ResultStore on our AsyncEngine pool, same query, bare endpoint", "raw"),
        Scenario(
            "engine_default",
            "the same, pool at the defaults (20 + 10 overflow)",
            "raw",
        ),
        Scenario("hot_identity", "hot GET, identity (through the compression layer)", "bare"),
        Scenario("hot_zstd", "hot GET, zstd (pre-encoded bytes)", "hot_identity"),
        Scenario("hot_br", "hot GET, br (pre-encoded bytes)", "hot_identity"),
        Scenario("hot_gzip", "hot GET, gzip (pre-encoded bytes)", "hot_identity"),
        Scenario("chrome", f"hot GET, a browser's Accept-Encoding ({CHROME})", "hot_identity"),
        Scenario("hot_304", "hot GET, If-None-Match with the current ETag (304)", "hot_identity"),
        Scenario(
            "peer_gzip",
            "hot GET, gzip by Starlette's GZipMiddleware instead of ours (the peer)",
            "hot_identity",
        ),
        Scenario("bare_gzip", "Starlette GZipMiddleware on the bare endpoint", "bare"),
        Scenario(
            "monitoring_on", "hot GET, the service behind the variants' path rewriting", "bare"
        ),
        Scenario(
            "monitoring_off", "hot GET, the same without the monitoring layer", "monitoring_on"
        ),
        Scenario(
            "raw_put",
            f"raw asyncpg pool, same upsert, bare endpoint ({PUT_IDS:,} ids, random)",
        ),
        Scenario("put", f"PUT ({PUT_IDS:,} ids, random)", "raw_put"),
        Scenario(
            "put_local",
            "PUT, the same with no Redis behind (what the write-through to Redis costs)",
            "raw_put",
        ),
        Scenario("raw_list", "raw asyncpg pool and orjson, same page, bare endpoint"),
        Scenario("list", "GET /results?limit=100", "raw_list"),
        Scenario("saturation", "GET, cache disabled, at the saturation connection count", "get"),
    ]
    return {row.key: row for row in rows}


def same_page(ours: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether two list pages hold the same results (timestamps compared as instants)."""

    def normal(page: dict[str, Any]) -> tuple[Any, ...]:
        return (
            [
                (
                    item["analysis_id"],
                    item["version"],
                    datetime.fromisoformat(item["created_at"]),
                    datetime.fromisoformat(item["updated_at"]),
                )
                for item in page["items"]
            ],
            page["next"],
        )

    try:
        return normal(ours) == normal(reference)
    except (KeyError, TypeError, ValueError):
        return False


def check_references(base: str, table: dict[str, Scenario]) -> str:
    """SystemExit unless every reference answers what the service answers; the ETag."""
    with httpx.Client(base_url=base, timeout=30) as client:
        identity = {"Accept-Encoding": "identity"}
        served = client.get(f"/results/{DOCUMENT_ID}", headers=identity)
        same_bytes = ["/asgi/doc", "/asgi-hit/doc", "/bare/doc"]
        if table["cashews"].built:
            same_bytes.append("/cashews/doc")
        for path in same_bytes:
            if client.get(path, headers=identity).content != served.content:
                raise SystemExit(f"{path} does not send the service's bytes")
        etag = served.headers["etag"]
        conditional = {**identity, "If-None-Match": etag}
        status = client.get(f"/results/{DOCUMENT_ID}", headers=conditional).status_code
        if status != 304:
            raise SystemExit(f"If-None-Match: {etag} got {status}, not 304")
        if not same_page(
            client.get("/results?limit=100").json(), client.get("/raw-list?limit=100").json()
        ):
            raise SystemExit("/raw-list does not send the page /results?limit=100 sends")
        body = orjson.dumps(document(0.1))
        as_json = {"Content-Type": "application/json"}
        answers = [
            client.put(path, content=body, headers=as_json)
            for path in ("/results/bench-put-1", "/raw-put/bench-rawput-1")
        ]
        shapes = {(r.status_code, tuple(sorted(r.json()))) for r in answers}
        if len(shapes) != 1:
            raise SystemExit(f"the service's PUT and the raw one answer differently: {shapes}")
    return etag


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk.require_wrk()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})  # the load generators' core; the server gets core 0
    doc = document(args.doc_kb)
    table = scenarios()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_database(args.postgres) as url,
        cache_prefix(args.redis) as prefix,
    ):
        work = Path(tmp)
        body = work / "document.json"
        body.write_bytes(orjson.dumps(doc))
        asyncio.run(seed(url, doc))
        database = asyncio.run(postmaster(url))
        with (
            server(url, args.redis, prefix, free_port(), work / "server.log") as base,
            # uvicorn's own protocol, for the raw callable alone: a second process on the
            # same core, idle while the other runs.
            server(
                url,
                args.redis,
                prefix,
                free_port(),
                work / "plain.log",
                http="httptools",
                pool_size=2,
            ) as plain,
        ):
            etag = check_references(base, table)
            if httpx.get(f"{plain}/asgi/doc").content != httpx.get(f"{base}/asgi/doc").content:
                raise SystemExit("the raw callable sends other bytes on uvicorn's own protocol")
            loads = {
                "asgi": wrk.Load("/asgi/doc"),
                "asgi_plain": wrk.Load("/asgi/doc"),
                "asgi_hit": wrk.Load("/asgi-hit/doc"),
                "bare": wrk.Load("/bare/doc"),
                **({"cashews": wrk.Load("/cashews/doc")} if table["cashews"].built else {}),
                "hit_l1": wrk.Load(f"/results/{DOCUMENT_ID}"),
                "hit_redis": wrk.Load(f"/redis-only/results/{DOCUMENT_ID}"),
                "miss": wrk.Load(
                    "/miss/results/x", spread_prefix="/miss/results/bench-miss-", spread=MISS_IDS
                ),
                "get": wrk.Load(
                    "/no-cache/results/x",
                    spread_prefix="/no-cache/results/bench-miss-",
                    spread=MISS_IDS,
                ),
                # The same reads as "get": one id at a time out of MISS_IDS, never one
                # row that stays hot in PostgreSQL's and the CPU's caches.
                **{
                    key: wrk.Load(f"{head}/x", spread_prefix=f"{head}/bench-miss-", spread=MISS_IDS)
                    for key, head in (
                        ("raw", "/raw"),
                        ("engine", "/engine"),
                        ("engine_default", "/engine-default"),
                    )
                },
                "hot_identity": wrk.Load(
                    f"/results/{DOCUMENT_ID}", headers=("Accept-Encoding: identity",)
                ),
                **{
                    f"hot_{coding}": wrk.Load(
                        f"/results/{DOCUMENT_ID}", headers=(f"Accept-Encoding: {coding}",)
                    )
                    for coding in ("zstd", "br", "gzip")
                },
                "chrome": wrk.Load(
                    f"/results/{DOCUMENT_ID}", headers=(f"Accept-Encoding: {CHROME}",)
                ),
                "hot_304": wrk.Load(f"/results/{DOCUMENT_ID}", headers=(f"If-None-Match: {etag}",)),
                "peer_gzip": wrk.Load(
                    f"/gzip-peer/results/{DOCUMENT_ID}", headers=("Accept-Encoding: gzip",)
                ),
                "bare_gzip": wrk.Load("/bare-gzip/doc", headers=("Accept-Encoding: gzip",)),
                "monitoring_on": wrk.Load(f"/with-metrics/results/{DOCUMENT_ID}"),
                "monitoring_off": wrk.Load(f"/no-metrics/results/{DOCUMENT_ID}"),
                # PUTs of the document to PUT_IDS ids, spread: the raw upsert, the
                # service, and the service with no Redis behind it.
                **{
                    key: wrk.Load(
                        f"{head}/x",
                        method="PUT",
                        body_file=body,
                        spread_prefix=f"{head}/{ids}",
                        spread=PUT_IDS,
                    )
                    for key, head, ids in (
                        ("raw_put", "/raw-put", "bench-rawput-"),
                        ("put", "/results", "bench-put-"),
                        ("put_local", "/no-cache/results", "bench-put-"),
                    )
                },
                "raw_list": wrk.Load("/raw-list?limit=100"),
                "list": wrk.Load("/results?limit=100"),
            }

            loads["saturation"] = loads["get"]  # the same reads, many more connections

            def measure(key: str, seconds: float, connections: int) -> wrk.WrkResult:
                target = plain if key == "asgi_plain" else base
                if loads[key].method == "PUT":
                    asyncio.run(settle_writes(url))
                before = cpu_seconds(SERVER_PIDS[target])
                database_before = cpu_seconds(database) if database else 0.0
                result = wrk.run(
                    target, loads[key], seconds=seconds, connections=connections, script_dir=work
                )
                # The requests wrk left in flight are this run's work, not the next one's:
                # a run at 1,024 connections left the server busy for a while after it.
                wait_until_idle(SERVER_PIDS[target])
                used = cpu_seconds(SERVER_PIDS[target]) - before
                database_used = cpu_seconds(database) - database_before if database else None
                if result.requests:
                    result.server_cpu_us = used / result.requests * 1e6
                    if database_used is not None:
                        result.database_cpu_us = database_used / result.requests * 1e6
                return result

            rows = [key for key in loads if key != "saturation"]
            if args.only:
                rows = [key for key in rows if key in args.only]
            for key in rows:  # warm-up: prepared statements, pool, caches of the OS
                measure(key, 1 if args.smoke else 2, args.connections)
            for round_number in range(args.runs):
                # Every other round backwards: a row's place in a round (what ran just
                # before it, how long the machine has been busy) then cancels out of the
                # medians instead of favouring the rows that always come first.
                order = rows if round_number % 2 == 0 else rows[::-1]
                for key in order:
                    table[key].runs.append(measure(key, args.seconds, args.connections))
                if not args.only or "saturation" in args.only:
                    table["saturation"].runs.append(
                        measure("saturation", args.seconds, args.saturation_connections)
                    )
            sizes = encoded_sizes(base)
            levels: dict[str, int] = httpx.get(f"{base}/bench/levels").json()
            chrome = httpx.get(
                f"{base}/results/{DOCUMENT_ID}", headers={"Accept-Encoding": CHROME}
            ).headers.get("content-encoding", "identity")
            queries, stampede_statuses = (
                asyncio.run(stampede(base, args.stampede)) if not args.only else (0, {})
            )
        monitoring_us = None
        if not args.only or {"monitoring_on", "monitoring_off"} & set(args.only):
            settings = Settings(
                database_url=url, redis_url=args.redis, cache_prefix=prefix, migrate_on_start=False
            )
            rounds, requests = (2, 500) if args.smoke else (15, 4000)
            monitoring_us = asyncio.run(
                monitoring_cost(
                    settings, f"/results/{DOCUMENT_ID}", rounds=rounds, requests=requests
                )
            )
    elapsed = time.monotonic() - started
    table["saturation"].title = f"GET, cache disabled, {args.saturation_connections:,} connections"
    report = render(
        args, table, queries, stampede_statuses, sizes, levels, chrome, monitoring_us, elapsed
    )
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report + "\n")
    print(f"\n(written to {args.output})", file=sys.stderr)
    return 0


ENCODED_PATHS = {
    "zstd": (f"/results/{DOCUMENT_ID}", "zstd"),
    "br": (f"/results/{DOCUMENT_ID}", "br"),
    "gzip": (f"/results/{DOCUMENT_ID}", "gzip"),
    "peer gzip": (f"/gzip-peer/results/{DOCUMENT_ID}", "gzip"),
}
"""What the compression rows send: (path, coding) per label."""


def encoded_sizes(base: str) -> dict[str, int]:
    """Bytes on the wire for the document in each coding (checked to be that coding)."""
    sizes = {"identity": len(httpx.get(f"{base}/results/{DOCUMENT_ID}").content)}
    with httpx.Client(base_url=base) as client:
        for label, (path, coding) in ENCODED_PATHS.items():
            with client.stream("GET", path, headers={"Accept-Encoding": coding}) as response:
                if response.headers.get("content-encoding") != coding:
                    raise SystemExit(f"{path} did not answer {coding}: {response.headers}")
                sizes[label] = sum(len(chunk) for chunk in response.iter_raw())
    return sizes


def monitoring_goal(
    in_process: tuple[float, float] | None, whole_us: float | None, paired: float | None
) -> Goal:
    """The monitoring layer's share of a hot GET's server CPU: its cost measured in
    process (:mod:`bench.in_process`) over what the request costs the server under wrk.
    For a server bound by its CPU, that is the share of req/s it takes."""
    text = "monitoring overhead ≤ 5% of hot GET req/s"
    under_wrk = "n/a" if paired is None else f"{(1 - paired) * 100:.1f}%"
    if in_process is None or whole_us is None:
        return Goal(text, f"n/a (req/s under wrk: {under_wrk})", None, "not measured in this run")
    on, off = in_process
    cost = on - off
    share = cost / (whole_us + cost)
    return Goal(
        text,
        f"{share * 100:.1f}%: {cost:.2f} µs of CPU per request in process, of "
        f"{whole_us + cost:.0f} µs under wrk (paired req/s under wrk: {under_wrk})",
        share <= 0.05,
        "L1 hit with the monitoring layer vs without; see bench/in_process.py",
    )


def render(
    args: argparse.Namespace,
    table: dict[str, Scenario],
    queries: int,
    stampede_statuses: dict[int, int],
    sizes: dict[str, int],
    levels: dict[str, int],
    chrome: str,
    monitoring_us: tuple[float, float] | None,
    elapsed: float,
) -> str:
    def show(value: float | None, suffix: str = "") -> str:
        return "n/a" if value is None else f"{value:.2f}{suffix}"

    def milliseconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"

    def built(*keys: str) -> bool:
        return all(table[key].built for key in keys)

    def at_least(value: float | None, bound: float, *keys: str) -> bool | None:
        """Whether ``value`` reaches ``bound``: None if a row is not built, False when
        the rows are built but gave no ratio (a row answered nothing)."""
        if value is None:
            ran = all(table[key].runs for key in keys)
            return None if not built(*keys) or not ran else False
        return value >= bound

    saturation = table["saturation"].statuses()
    odd = {s: n for s, n in saturation.items() if s not in (200, 503)}
    on_vs_off = ratio(table, "hit_l1", "get")
    monitoring = ratio(table, "monitoring_on", "monitoring_off")
    hot = {
        ref: ratio(table, "hot_identity", ref)
        for ref in ("bare", "asgi", "asgi_plain", "asgi_hit", "cashews")
    }
    headers_alone = ratio(table, "asgi_hit", "asgi")
    codings = {
        name: ratio(table, key, "hot_identity")
        for name, key in (("zstd", "hot_zstd"), ("br", "hot_br"), ("gzip", "hot_gzip"))
    }
    codings[f"browser ({chrome})"] = ratio(table, "chrome", "hot_identity")
    not_modified = ratio(table, "hot_304", "hot_identity")
    listing = ratio(table, "list", "raw_list")
    list_p99 = p99_of(table, "list")
    raw_list_p99 = p99_of(table, "raw_list")
    p99_ratio = None if list_p99 is None or not raw_list_p99 else list_p99 / raw_list_p99
    put = ratio(table, "put", "raw_put")
    get = ratio(table, "get", "raw")
    goals = [
        Goal(
            "L1 hit, identity ≥ 1.0x the bare Starlette endpoint",
            show(hot["bare"], "x"),
            at_least(hot["bare"], 1.0, "hot_identity", "bare"),
            "see the hot_identity row",
        ),
        Goal(
            "L1 hit, identity ≥ 0.8x the raw ASGI callable (the server's own limit)",
            f"{show(hot['asgi_plain'], 'x')} of it on uvicorn's own protocol; on the "
            f"service's, {show(hot['asgi'], 'x')} ({show(hot['asgi_hit'], 'x')} of the "
            f"callable sending the hit's headers, which alone run at {show(headers_alone, 'x')})",
            at_least(hot["asgi_plain"], 0.8, "hot_identity", "asgi_plain"),
            "see the hot_identity row",
        ),
        Goal(
            "L1 hit, identity ≥ 2x cashews @cache on the same Redis",
            show(hot["cashews"], "x"),
            at_least(hot["cashews"], 2.0, "hot_identity", "cashews"),
            "see the hot_identity row"
            if table["cashews"].built
            else "cashews is not installed (pip install -e '.[bench]')",
        ),
        Goal(
            "compressed hot GET ≥ 0.95x identity: zstd, br, gzip and a browser's Accept-Encoding",
            ", ".join(f"{c} {show(r, 'x')}" for c, r in codings.items())
            + " (the peer, GZipMiddleware, on the same endpoint: "
            f"{show(ratio(table, 'peer_gzip', 'hot_identity'), 'x')})",
            None
            if args.only and None in codings.values()
            else all((r or 0) >= 0.95 for r in codings.values()),
            "pre-encoded bytes; see the hot rows",
        ),
        Goal(
            "hot GET answered 304 (If-None-Match) ≥ 1.0x identity",
            show(not_modified, "x"),
            at_least(not_modified, 1.0, "hot_304", "hot_identity"),
            "see the 304 row",
        ),
        Goal(
            "GET /results?limit=100 ≥ 0.8x the raw asyncpg pool and orjson, req/s",
            show(listing, "x"),
            at_least(listing, 0.8, "list", "raw_list"),
            "see the list rows",
        ),
        Goal(
            "GET /results?limit=100 p99 ≤ 2x the raw asyncpg pool and orjson's p99",
            f"{show(p99_ratio, 'x')} ({milliseconds(list_p99)} vs {milliseconds(raw_list_p99)})",
            None if p99_ratio is None and args.only else p99_ratio is not None and p99_ratio <= 2.0,
            "see the list rows",
        ),
        Goal(
            "PUT ≥ 0.9x the same upsert on the raw asyncpg pool",
            show(put, "x"),
            at_least(put, 0.9, "put", "raw_put"),
            "see the PUT rows",
        ),
        Goal(
            "uncached GET (cache off) ≥ 0.9x the same query on the raw asyncpg pool",
            show(get, "x"),
            at_least(get, 0.9, "get", "raw"),
            "see the cache-off row",
        ),
        Goal(
            "cache on vs off on GET ≥ 4x",
            show(on_vs_off, "x"),
            at_least(on_vs_off, 4, "hit_l1", "get"),
            "L1 hit vs PostgreSQL every time",
        ),
        monitoring_goal(monitoring_us, table["monitoring_off"].server_cpu_us(), monitoring),
        Goal(
            f"stampede: {args.stampede:,} concurrent GETs of a cold key → 1 database query",
            f"{queries:,} queries; statuses {stampede_statuses}",
            queries == 1,
            "single flight per process",
        ),
        Goal(
            f"{args.saturation_connections:,} connections: 0 responses other than 200 and 503",
            f"{sum(odd.values()):,} ({odd or 'none'}); socket errors "
            f"{table['saturation'].socket_errors():,}",
            not odd,
            "see statuses",
        ),
    ]
    # With --only, the rows that ran (and the goals they decide); the rest say nothing.
    shown = {k: row for k, row in table.items() if row.runs or not args.only}
    machine = (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    size = len(orjson.dumps(document(args.doc_kb)))
    mode = "smoke mode (not a measurement)" if args.smoke else "measurement"
    configured = ", ".join(f"{coding} {level}" for coding, level in levels.items())
    return "\n".join(
        [
            f"### Benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {mode}",
            "",
            f"`python -m bench --runs {args.runs} --seconds {args.seconds:g} --connections "
            f"{args.connections} --saturation-connections {args.saturation_connections} "
            f"--stampede {args.stampede} --doc-kb {args.doc_kb:g}"
            f"{' --only ' + ','.join(args.only) if args.only else ''}` on {machine}; "
            f"server on core 0, wrk on core 1, PostgreSQL on the same machine; "
            f"the service's pool and the raw asyncpg pool both hold 30 connections; "
            f"{size:,}-byte result document; medians of {args.runs} interleaved runs (a ratio is "
            f"the median of the ratios within each round); "
            f"took {elapsed:.0f} s.",
            "",
            scenario_table(shown),
            "",
            f"Compression of the {sizes['identity']:,}-byte document (identity / encoded): "
            + ", ".join(
                f"{label} {sizes['identity'] / encoded:.1f} ({encoded:,} B)"
                for label, encoded in sizes.items()
                if label != "identity"
            )
            + ". zstd, br and gzip are encoded once per version and sent at the configured "
            f"levels ({configured}); a browser's Accept-Encoding ({CHROME}) gets {chrome}; "
            "the peer is gzip 9.",
            "",
            goal_table(goals if not args.only else [g for g in goals[:-2] if g.met is not None]),
        ]
    )


def p99_of(table: dict[str, Scenario], key: str) -> float | None:
    """The median p99 latency (ms) of a measured row, or None."""
    row = table.get(key)
    if row is None or not (row.built and row.runs):
        return None
    return row.latency("p99_ms")


if __name__ == "__main__":
    sys.exit(main())
