"""CPU per hot GET with ``service serve --workers 1`` and ``--workers 2``.

    python -m bench.workers [--runs 5] [--seconds 4] [--connections 64] [--doc-kb 32]

Both commands run at once, as deployed (``python -m service serve``), on one fresh
database and one Redis prefix, each with a 32 KB result in its L1; wrk (pinned to core
1) reads it from one and then the other, in alternating order, ``--runs`` times. The
servers are not pinned: two workers are meant to use both cores. What is measured is
the CPU time of each server's whole process tree (the supervisor and its workers, from
``/proc``) over a run, divided by the requests answered: the cost of a request, which
the machine's drifting speed and the core wrk takes change less than req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import wrk
from bench.__main__ import bench_database, cache_prefix, document, free_port, running
from bench.app import DOCUMENT_ID
from bench.cpu import cpu_seconds
from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore


@contextlib.contextmanager
def serve(workers: int, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    command += ["--workers", str(workers)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    with running(process, base, log):
        yield base, process.pid


async def seed(url: str, doc_kb: float) -> None:
    async with ConnectionPool(url) as pool:
        await upgrade(pool)
        await ResultStore(pool).put(DOCUMENT_ID, document(doc_kb))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--doc-kb", type=float, default=32.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    wrk.require_wrk()
    load = wrk.Load(f"/results/{DOCUMENT_ID}", headers=("Accept-Encoding: identity",))
    cpu: dict[int, list[float]] = {1: [], 2: []}
    rates: dict[int, list[float]] = {1: [], 2: []}
    with (
        bench_database(args.postgres) as url,
        cache_prefix(args.redis) as prefix,
        tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch,
    ):
        asyncio.run(seed(url, args.doc_kb))
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": args.redis,
            "CACHE_PREFIX": prefix,
            "LOG_LEVEL": "warning",
        }
        with (
            serve(1, env, Path(scratch) / "one.log") as one,
            serve(2, env, Path(scratch) / "two.log") as two,
        ):
            servers = {1: one, 2: two}
            scripts = Path(scratch)
            for base, _ in servers.values():  # into every worker's L1 (and out of the run)
                wrk.run(
                    base, load, seconds=1, connections=args.connections, script_dir=Path(scratch)
                )
            for round_ in range(args.runs):
                for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
                    base, pid = servers[workers]
                    before = cpu_seconds(pid)
                    result = wrk.run(
                        base,
                        load,
                        seconds=args.seconds,
                        connections=args.connections,
                        script_dir=scripts,
                    )
                    used = cpu_seconds(pid) - before
                    answered = sum(result.statuses.values())
                    assert result.unexpected == {}, result.unexpected
                    cpu[workers].append(used / answered * 1e6)
                    rates[workers].append(result.requests_per_second)
                    print(
                        f"round {round_ + 1}, {workers} worker(s):"
                        f" {result.requests_per_second:,.0f} req/s,"
                        f" {used / answered * 1e6:.0f} µs CPU per GET",
                        file=sys.stderr,
                    )
    print(
        f"`python -m bench.workers --runs {args.runs} --seconds {args.seconds:g}"
        f" --connections {args.connections} --doc-kb {args.doc_kb:g}` on {os.cpu_count()} cores;"
        " servers unpinned, wrk on core 1; medians of the interleaved runs.\n"
    )
    print("| workers | req/s (median) | CPU per hot GET, µs (median) | spread (min-max) |")
    print("|---:|---:|---:|---:|")
    for workers in (1, 2):
        print(
            f"| {workers} | {statistics.median(rates[workers]):,.0f}"
            f" | {statistics.median(cpu[workers]):.0f}"
            f" | {min(cpu[workers]):.0f}-{max(cpu[workers]):.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
