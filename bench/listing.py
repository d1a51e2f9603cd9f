"""``python -m bench.listing``: the list endpoint before and after the maintenance the
optimizer's report recommends.

A fresh database gets 100,000 results the way a bulk load or a restore leaves them: rows
written, half of them rewritten, autovacuum off for the table, never analyzed. The
report then recommends ``VACUUM (ANALYZE) public.results``; the bench measures
``GET /results?limit=100`` (first pages and pages deep in the keyset) with wrk, runs
exactly that recommendation through :meth:`QueryOptimizer.apply`, and measures again.
The state cannot be undone, so the runs are before-then-after rather than interleaved:
medians of ``--runs`` runs on each side, with their spread, say how much is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import wrk
from bench.__main__ import bench_database, cache_prefix, free_port, server
from service.db.migrations import upgrade
from service.db.optimization import QueryOptimizer
from service.db.pool import ConnectionPool

ROWS = 100_000
PATHS = {
    "first page": "/results?limit=100",
    "deep page": "/results?limit=100&after=r-0090000",
}


async def load(url: str) -> None:
    """100,000 rows, half rewritten (dead versions left behind), no statistics."""
    async with ConnectionPool(url) as pool:
        await upgrade(pool)
        async with pool.connection() as conn:
            await conn.exec_driver_sql("ALTER TABLE results SET (autovacuum_enabled = false)")
            await conn.exec_driver_sql(
                "INSERT INTO results (analysis_id, result, version, created_at, updated_at)"
                " SELECT 'r-' || lpad(i::text, 7, '0'), jsonb_build_object('n', i), 1,"
                " now(), now() FROM generate_series(1, $1::int) AS i",
                (ROWS,),
            )
            await conn.exec_driver_sql(
                "UPDATE results SET version = version + 1, updated_at = now()"
                " WHERE right(analysis_id, 1) IN ('0', '2', '4', '6', '8')"
            )


async def recommended(url: str) -> tuple[str | None, float]:
    """The VACUUM / ANALYZE the report recommends for results, applied; its seconds."""
    async with ConnectionPool(url) as pool:
        optimizer = QueryOptimizer(pool)
        report = await optimizer.report()
        for finding in report.check("vacuum_analyze").findings:
            if finding.subject == "public.results":
                return finding.ddl, await optimizer.apply(finding)
    return None, 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.listing", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    wrk.require_wrk()
    results: dict[str, dict[str, list[float]]] = {name: {} for name in PATHS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_database(args.postgres) as url,
        cache_prefix(args.redis) as prefix,
    ):
        work = Path(tmp)
        asyncio.run(load(url))
        with server(url, args.redis, prefix, free_port(), work / "server.log") as base:

            def measure(side: str) -> None:
                for path in PATHS.values():  # warm-up
                    wrk.run(base, wrk.Load(path), seconds=1, connections=4, script_dir=work)
                for _ in range(args.runs):
                    for name, path in PATHS.items():
                        result = wrk.run(
                            base,
                            wrk.Load(path),
                            seconds=args.seconds,
                            connections=args.connections,
                            script_dir=work,
                        )
                        if result.unexpected:
                            raise SystemExit(f"{path}: {result.unexpected}")
                        results[name].setdefault(side, []).append(result.requests_per_second)

            measure("before")
            ddl, seconds = asyncio.run(recommended(url))
            if ddl is None:
                raise SystemExit("the report recommended nothing for public.results")
            time.sleep(1)
            measure("after")
    lines = [
        f"`python -m bench.listing --runs {args.runs} --seconds {args.seconds:g}"
        f" --connections {args.connections}`: {ROWS:,} rows, half rewritten, autovacuum off;"
        f" the report recommended `{ddl}`, which took {seconds:.2f} s.",
        "",
        "| GET /results?limit=100 | before req/s (median, spread) | after req/s | after / before |",
        "|---|---:|---:|---:|",
    ]
    for name, sides in results.items():
        before, after = statistics.median(sides["before"]), statistics.median(sides["after"])
        lines.append(
            f"| {name} | {before:,.0f} ({min(sides['before']):,.0f}-{max(sides['before']):,.0f})"
            f" | {after:,.0f} ({min(sides['after']):,.0f}-{max(sides['after']):,.0f})"
            f" | {after / before:.2f} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
