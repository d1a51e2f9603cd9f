"""An uncached read through the AsyncEngine next to the same query on a raw asyncpg pool.

Three endpoints live in one process, read the same row and answer the same bytes:

* ``/raw``: asyncpg's own pool, the driver's limit;
* ``/store``: our ResultStore on our ConnectionPool (autocommit, idle-only pre-ping);
* ``/naive``: a plain AsyncEngine with ``pool_pre_ping=True`` and a default connection.

The ratios of their requests/s are what SQLAlchemy costs over the driver, with and
without our pool's choices. Run with ``python -m bench.driver``; wrk must be installed
(Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
from sqlalchemy import Text, bindparam, cast, select
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.results import ResultStore
from service.db.schema import results

RAW_QUERY = (
    "SELECT result::text, version, created_at, updated_at FROM results"
    " WHERE analysis_id = $1 AND result IS NOT NULL"
)


def create_app() -> Starlette:
    """Two read endpoints over one database: ``/store/{id}`` and ``/raw/{id}``."""
    url = os.environ["DATABASE_URL"]
    size = int(os.environ.get("DB_POOL_SIZE", "20"))
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = ConnectionPool(url, pool_size=size, max_overflow=0)
        await upgrade(pool)
        state["store"] = ResultStore(pool)
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        state["raw"] = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
        state["naive"] = create_async_engine(url, pool_size=size, pool_pre_ping=True)
        yield
        await state["naive"].dispose()
        await state["raw"].close()
        await pool.aclose()

    async def store(request: Request) -> Response:
        stored = await state["store"].get(request.path_params["id"])
        return Response(stored.body, media_type="application/json")

    async def raw(request: Request) -> Response:
        async with state["raw"].acquire() as conn:
            row = await conn.fetchrow(RAW_QUERY, request.path_params["id"])
        return Response(row[0].encode(), media_type="application/json")

    naive_query = select(cast(results.c.result, Text)).where(
        results.c.analysis_id == bindparam("id"), results.c.result.is_not(None)
    )

    async def naive(request: Request) -> Response:
        async with state["naive"].connect() as conn:
            row = (await conn.execute(naive_query, {"id": request.path_params["id"]})).first()
        return Response(row[0].encode(), media_type="application/json")

    return Starlette(
        routes=[
            Route("/store/{id}", store),
            Route("/raw/{id}", raw),
            Route("/naive/{id}", naive),
        ],
        lifespan=lifespan,
    )


def wrk(url: str, seconds: int, connections: int) -> float:
    """Requests/s that wrk measured (pinned to the second core)."""
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk run failed:\n{out}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    env = {**os.environ, "DATABASE_URL": args.database_url}
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "uvicorn",
            "bench.driver:create_app",
            "--factory",
            "--port",
            str(args.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.put(f"{base}/store/x").status_code:
                    break
            time.sleep(0.1)
        asyncio.run(_seed(args.database_url))
        names = {
            "raw": "raw asyncpg pool (the driver's limit)",
            "store": "ResultStore on our ConnectionPool (AsyncEngine)",
            "naive": "plain AsyncEngine, pool_pre_ping=True",
        }
        samples: dict[str, list[float]] = {name: [] for name in names}
        for name in names:  # warm-up
            wrk(f"{base}/{name}/bench-doc", 3, args.connections)
        for _ in range(args.runs):
            for name in names:
                samples[name].append(
                    wrk(f"{base}/{name}/bench-doc", args.seconds, args.connections)
                )
        raw = statistics.median(samples["raw"])
        print(f"| read path | req/s (median of {args.runs}) | / raw asyncpg | runs |")
        print("|---|---:|---:|---|")
        for name, label in names.items():
            median = statistics.median(samples[name])
            runs = ", ".join(f"{s:,.0f}" for s in samples[name])
            print(f"| {label} | {median:,.0f} | {median / raw:.2f} | {runs} |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return 0


async def _seed(url: str) -> None:
    async with ConnectionPool(url) as pool:
        document = {"rows": [{"id": n, "value": n * 0.5, "label": f"row {n}"} for n in range(300)]}
        await ResultStore(pool).put("bench-doc", document)


if __name__ == "__main__":
    sys.exit(main())
