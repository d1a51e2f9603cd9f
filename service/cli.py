"""The ``service`` command: ``serve``, ``migrate``, ``cache stats``, ``db report`` and
``db maintain``.

Exit status: 0 success, 1 the work failed (database unreachable, ...), 2 bad usage or a
bad setting (the message names the variable; no traceback). ``serve`` stopped by SIGTERM
drains, then ends *by* that signal (143 in a shell), as uvicorn does, so a supervisor
sees a requested stop rather than a crash or a clean exit of its own accord.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from service._version import __version__
from service.config import Settings
from service.errors import ConfigurationError, ServiceError
from service.logs import configure_logging

if TYPE_CHECKING:
    from starlette.applications import Starlette


def app_factory() -> Starlette:
    """What uvicorn imports in each worker: settings from the environment, logging, app."""
    from service.app import create_app
    from service.server import configure

    settings = Settings.from_environ()
    configure_logging(settings.log_level, settings.log_format)
    configure(settings)  # the request-head limits of this worker's HTTP protocol
    return create_app(settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.workers > 1 and not settings.redis_url:
        # Each worker's cache would be its own, and a write through one would not reach
        # the others' copies: workers share what they cache, and hear of each other's
        # writes, through Redis, as replicas do.
        print(
            "service: --workers above 1 needs REDIS_URL: the workers share their cache"
            " and invalidate each other's copies through Redis",
            file=sys.stderr,
        )
        return 2
    if settings.migrate_on_start:
        # Once, here, before any worker starts: an unreachable database is then one line
        # and exit status 1 rather than a start-up traceback in every worker.
        _migrate(argparse.Namespace(revision="head", quiet=True), settings)
        os.environ["MIGRATE_ON_START"] = "false"

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        loop = "asyncio"
    with _worker_directory(args.workers):
        _run_uvicorn(args, loop)
    return 0


@contextlib.contextmanager
def _worker_directory(workers: int) -> Iterator[None]:
    """For several workers, the directory where they find each other's metrics
    (:mod:`service.monitoring.workers`), named to them in the environment."""
    if workers == 1:
        yield
        return
    from service.monitoring import workers as worker_metrics

    with tempfile.TemporaryDirectory(prefix="service-workers-") as directory:
        os.environ[worker_metrics.DIRECTORY_VARIABLE] = directory
        os.environ[worker_metrics.COUNT_VARIABLE] = str(workers)
        yield


def _run_uvicorn(args: argparse.Namespace, loop: str) -> None:
    import uvicorn

    uvicorn.run(
        "service.cli:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop=loop,
        http="service.server:GuardedHttpToolsProtocol",
        lifespan="on",
        access_log=args.access_log,
        log_config=None,
        timeout_graceful_shutdown=args.graceful_timeout,
        server_header=False,
    )


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from service.db.migrations import upgrade
    from service.wiring import connection_pool

    async def run() -> str | None:
        async with connection_pool(settings) as pool:
            _, after = await upgrade(pool, args.revision)
            return after

    revision = asyncio.run(run())
    if not getattr(args, "quiet", False):
        print(f"database is at revision {revision}")
    return 0


def _cache_stats(args: argparse.Namespace, settings: Settings) -> int:
    """Print what the shared cache (Redis) reports, as JSON.

    Counters of each server process (hits per tier, breaker) live in that process:
    ``GET /admin/cache/stats`` shows them.
    """
    import orjson

    from service.wiring import cache_manager

    if not settings.redis_url:
        print(
            "service: REDIS_URL is not set: each server process caches in its own memory;"
            " GET /admin/cache/stats shows a process's counters",
            file=sys.stderr,
        )
        return 1

    async def run() -> dict[str, int | str | bool]:
        async with cache_manager(settings) as cache:
            return await cache.backend_info()

    info = asyncio.run(run())
    sys.stdout.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _db_report(args: argparse.Namespace, settings: Settings) -> int:
    """Print the optimizer's report: a readable table, or JSON with ``--json``."""
    import orjson

    from service.db.report import Report
    from service.wiring import connection_pool, query_optimizer

    async def run() -> Report:
        async with connection_pool(settings) as pool:
            return await query_optimizer(settings, pool).report()

    report = asyncio.run(run())
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(report.as_text())
    return 0


def _db_snapshot(args: argparse.Namespace, settings: Settings) -> int:
    """Take a snapshot of query statistics and table sizes for the report's history."""
    from service.db.history import Snapshot
    from service.wiring import connection_pool, query_optimizer

    async def run() -> Snapshot:
        async with connection_pool(settings) as pool:
            return await query_optimizer(settings, pool).snapshot()

    taken = asyncio.run(run())
    print(
        f"snapshot {taken.id} at {taken.taken_at.isoformat()}: {taken.statements} statements,"
        f" {taken.tables} tables" + (f" ({taken.note})" if taken.note else "")
    )
    return 0


def _db_maintain(args: argparse.Namespace, settings: Settings) -> int:
    """Run ANALYZE or VACUUM (ANALYZE) table by table; print what ran, with timings."""
    from service.db.optimization import MaintenanceRun
    from service.wiring import connection_pool, query_optimizer

    operation = "vacuum" if args.vacuum else "analyze"

    async def run() -> MaintenanceRun:
        async with connection_pool(settings) as pool:
            optimizer = query_optimizer(settings, pool)
            return await optimizer.maintain(operation, args.table or None)

    result = asyncio.run(run())
    for table in result.tables:
        detail = f" ({table.detail})" if table.detail else ""
        print(f"{table.outcome:<9} {table.seconds:8.3f} s  {table.statement}{detail}")
    print(f"{operation}: {len(result.tables)} statements in {result.seconds:.3f} s")
    return 0 if all(t.outcome == "done" for t in result.tables) else 1


MAX_WORKERS = 64


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_WORKERS}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="service",
        description="An asyncio results API. Settings come from the environment or ./.env.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service (applies pending migrations)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="worker processes on the port (default 1; more need REDIS_URL); /metrics"
        ' of any worker reports every worker\'s, labelled worker="<n>"',
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds SIGTERM waits for in-flight requests (default 30)",
    )
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply pending database migrations and exit")
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.set_defaults(run=_migrate)

    cache = commands.add_parser("cache", help="inspect the shared cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    stats = cache_commands.add_parser("stats", help="print what Redis reports, as JSON")
    stats.set_defaults(run=_cache_stats)

    db = commands.add_parser("db", help="diagnose and maintain the database")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    report = db_commands.add_parser(
        "report", help="unused, duplicate and invalid indexes, vacuum state, slow queries, ..."
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(run=_db_report)
    snapshot = db_commands.add_parser(
        "snapshot", help="record query statistics and table sizes; the report shows changes"
    )
    snapshot.set_defaults(run=_db_snapshot)
    maintain = db_commands.add_parser(
        "maintain", help="ANALYZE or VACUUM (ANALYZE), one table at a time"
    )
    which = maintain.add_mutually_exclusive_group(required=True)
    which.add_argument("--analyze", action="store_true", help="refresh planner statistics")
    which.add_argument("--vacuum", action="store_true", help="VACUUM (ANALYZE): reclaim dead rows")
    maintain.add_argument(
        "--table",
        action="append",
        metavar="T",
        help="a table to maintain (repeat for several; default: every table)",
    )
    maintain.set_defaults(run=_db_maintain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_environ()
    except ConfigurationError as exc:
        print(f"service: invalid setting {exc.variable}: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = args.run(args, settings)
    except ServiceError as exc:
        print(f"service: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
