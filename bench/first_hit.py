"""What a result costs in Redis, and what its first read costs on a replica that never saw it.

    python -m bench.first_hit [--ids 300] [--doc-kb 22]

Two replicas (two ResultCaches, each with its own L1) share one Redis and one
PostgreSQL database of their own. For each id, replica A writes the result; then
replica B reads it for the first time as the results route does for a browser (the
read, then the ``zstd`` representation) and again (an L1 hit), and A reads it (its
first read after its own write, which left only Redis holding it). Run once with shared
entries stored as they are and once compressed (SharedZstd), interleaved per id;
prints the medians and Redis's MEMORY USAGE per key.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from bench.__main__ import bench_database, document
from service.cache.backends import RedisBackend
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.result_cache import NAMESPACE, ResultCache, SharedZstd
from service.core.codings import ZSTD
from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore


async def first_read(results: ResultCache, analysis_id: str) -> float:
    """Seconds of CPU for a browser's read of ``analysis_id``: the read, then its zstd bytes."""
    started = time.process_time()
    read = await results.get(analysis_id)
    ready = read.ready
    assert ready is not None
    await ready.make(ZSTD, 3, 500)
    return time.process_time() - started


async def measure(url: str, redis_url: str, ids: int, doc: dict[str, Any]) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    async with ConnectionPool(url) as pool:
        await upgrade(pool)
        store = ResultStore(pool)
        rows: dict[str, dict[str, list[float]]] = {}
        prefixes = []
        caches = []
        for name, zstd in (("as is", None), ("zstd", SharedZstd())):
            prefix = f"firsthit{uuid.uuid4().hex[:8]}"
            prefixes.append(prefix)
            a = ResultCache(
                CacheManager(RedisBackend(redis_url), prefix=prefix),
                store,
                l1=LocalCache(1 << 28),
                zstd=zstd,
            )
            b = ResultCache(
                CacheManager(RedisBackend(redis_url), prefix=prefix),
                store,
                l1=LocalCache(1 << 28),
                zstd=zstd,
            )
            await a.start()
            await b.start()
            caches.append((name, prefix, a, b))
            rows[name] = {"b_first": [], "b_hit": [], "a_first": [], "memory": []}
        try:
            for n in range(ids):
                for name, prefix, a, b in caches if n % 2 else reversed(caches):
                    rid = f"fh-{n}"
                    await a.put(rid, doc)
                    await asyncio.sleep(0.005)  # the write's notice reaches B first
                    row = rows[name]
                    # Whichever reads first right after the write may pay for what the
                    # write left behind (its notice arriving, say): alternate.
                    if n % 4 < 2:
                        row["b_first"].append(await first_read(b, rid))
                        row["a_first"].append(await first_read(a, rid))
                    else:
                        row["a_first"].append(await first_read(a, rid))
                        row["b_first"].append(await first_read(b, rid))
                    row["b_hit"].append(await first_read(b, rid))
                    used = await redis.memory_usage(f"{prefix}:{NAMESPACE}:{rid}", samples=0)
                    row["memory"].append(float(used or 0))
        finally:
            for _, prefix, a, b in caches:
                await a.aclose()
                await b.aclose()
                await a.cache.aclose()
                await b.cache.aclose()
                keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
                if keys:
                    await redis.unlink(*keys)
            await redis.aclose()
    columns = (
        "shared entry",
        "Redis bytes per key",
        "B's first read, µs CPU",
        "A's first read",
        "an L1 hit",
        "B first / L1 hit",
        "B first / A first",
    )
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        print(
            f"| {name} | {med['memory']:,.0f} | {med['b_first'] * 1e6:,.0f} | "
            f"{med['a_first'] * 1e6:,.0f} | {med['b_hit'] * 1e6:,.0f} | "
            f"{med['b_first'] / med['b_hit']:.2f} | {med['b_first'] / med['a_first']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=300)
    parser.add_argument("--doc-kb", type=float, default=22)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with bench_database(args.postgres) as url:
        asyncio.run(measure(url, args.redis, args.ids, document(args.doc_kb)))


if __name__ == "__main__":
    main()
