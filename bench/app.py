"""The benchmark's server: the full service plus its references, in one process.

A tiny path dispatcher (no framework in the way) sends

* ``/bare/doc``       to a bare Starlette endpoint returning the stored document's bytes;
* ``/bare-gzip/doc``  to the same endpoint behind Starlette's GZipMiddleware (the peer);
* ``/raw/{id}``       to the same query on asyncpg's own pool (the driver's limit);
* ``/engine/{id}``    to ResultStore.get on the service's ConnectionPool, in the same bare
                      endpoint, so engine vs raw compares the database layers only;
* ``/engine-default/{id}`` the same on a second pool with the default sizes (20 + 10
                      overflow), to show what overflow connections cost under load;
* ``/bench/queries``  to the number of SQL statements the service has run so far;
* ``/redis-only/...``, ``/miss/...``, ``/no-cache/...`` to the service's routes with a
                      ResultCache of their own (same pool, same store): Redis without L1;
                      Redis entries that expire after 1 ms (every read a full miss: Redis
                      GET, PostgreSQL, compare-and-set fill); and a cache with no room;
* ``/no-metrics/...`` to the service's results routes, cache and compression layer with
                      no monitoring middleware: what metrics cost on the hot path;
* ``/inline/...``     to the service with no pre-encoded bytes (ENCODED_MAX_BYTES=0), so
                      every compressed response is compressed inline;
* ``/gzip-peer/...``  to the service's own routes and cache behind Starlette's
                      GZipMiddleware (level 9, its default) instead of ours, with no
                      pre-encoded bytes: the peer on the very same endpoint;
* everything else     to the service, exactly as ``service serve`` builds it.

so every ratio in the report compares paths that share one process, one core and one
event loop. Configured through the service's own settings (``DATABASE_URL`` ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy import Engine, event
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import results as results_api
from service.api.responses import handle_exception
from service.app import create_app
from service.cache.backends import MemoryBackend
from service.cache.manager import CacheManager
from service.cache.results import ResultCache
from service.config import Settings
from service.core.compression import CompressionMiddleware
from service.db.pool import ConnectionPool
from service.db.results import ResultStore

DOCUMENT_ID = "bench-doc"
RAW_QUERY = (
    "SELECT result::text, version, created_at, updated_at FROM results"
    " WHERE analysis_id = $1 AND result IS NOT NULL"
)


def create_bench_app() -> ASGIApp:
    """The dispatcher described in the module docstring (a uvicorn ``--factory``)."""
    settings = Settings.from_environ()
    service = create_app(settings)
    shared: dict[str, Any] = {"queries": 0}

    async def bare(request: Request) -> Response:
        body = shared.get("document")
        if body is None:  # read once, on first use: the same bytes the service sends
            store: ResultStore = shared["store"]
            stored = await store.get(DOCUMENT_ID)
            if stored is None:
                return Response(status_code=404)
            body = shared["document"] = stored.body
        return Response(body, media_type="application/json")

    async def raw(request: Request) -> Response:
        async with shared["raw"].acquire() as conn:
            row = await conn.fetchrow(RAW_QUERY, request.path_params["id"])
        if row is None:
            return Response(status_code=404)
        return Response(row[0].encode(), media_type="application/json")

    async def engine(request: Request) -> Response:
        store: ResultStore = shared["default_store" if "default" in request.url.path else "store"]
        stored = await store.get(request.path_params["id"])
        if stored is None:
            return Response(status_code=404)
        return Response(stored.body, media_type="application/json")

    async def queries(request: Request) -> Response:
        return JSONResponse({"queries": shared["queries"]})

    bare_app = Starlette(routes=[Route("/bare/doc", bare)])
    gzip_app = GZipMiddleware(Starlette(routes=[Route("/bare-gzip/doc", bare)]))
    raw_app = Starlette(routes=[Route("/raw/{id}", raw)])
    engine_app = Starlette(
        routes=[Route("/engine/{id}", engine), Route("/engine-default/{id}", engine)]
    )
    queries_app = Starlette(routes=[Route("/bench/queries", queries)])
    prefixes: list[tuple[str, ASGIApp]] = [
        ("/bare/", bare_app),
        ("/bare-gzip/", gzip_app),
        ("/raw/", raw_app),
        ("/engine/", engine_app),
        ("/engine-default/", engine_app),
        ("/bench/", queries_app),
    ]
    variants: dict[str, dict[str, Any]] = {}
    targets: dict[str, ASGIApp] = {
        "/no-metrics": Starlette(
            routes=results_api.routes,
            exception_handlers={Exception: handle_exception},
            middleware=[
                Middleware(
                    CompressionMiddleware,
                    encodings=settings.compression_encodings,
                    minimum_size=settings.compression_min_size,
                    levels=settings.compression_levels,
                )
            ],
        ),
        "/gzip-peer": GZipMiddleware(
            Starlette(routes=results_api.routes, exception_handlers={Exception: handle_exception})
        ),
    }

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[dict[str, Any]]:
        async with service.router.lifespan_context(service) as maybe_state:
            state: dict[str, Any] = dict(maybe_state or {})
            shared["store"] = state["store"]

            # Every engine in this process: the service's pool has one (the raw asyncpg
            # pool is not SQLAlchemy, so it is not counted).
            @event.listens_for(Engine, "before_cursor_execute")
            def _count(*_: Any) -> None:
                shared["queries"] += 1

            dsn = settings.database.set(drivername="postgresql").render_as_string(
                hide_password=False
            )
            # asyncpg keeps every connection it opens; give it the service's whole pool.
            size = settings.db_pool_size + settings.db_max_overflow
            shared["raw"] = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
            default_pool = ConnectionPool(settings.database)
            shared["default_store"] = ResultStore(default_pool)
            store = state["store"]
            no_l1 = dataclasses.replace(settings, l1_max_bytes=0)
            caches = {
                "/redis-only": ResultCache.from_settings(no_l1, store),
                "/miss": ResultCache(CacheManager.from_settings(no_l1), store, ttl=0.001),
                "/no-cache": ResultCache(CacheManager(MemoryBackend(0)), store),
                "/inline": ResultCache.from_settings(
                    dataclasses.replace(settings, encoded_max_bytes=0), store
                ),
            }
            for prefix, cache in caches.items():
                await cache.start()
                variants[prefix] = {**state, "results": cache}
            # The route pre-encodes only the codings COMPRESSION_ENCODINGS offers: none here.
            peer_settings = dataclasses.replace(settings, compression_encodings=())
            variants["/gzip-peer"] = {**state, "settings": peer_settings}
            variants["/no-metrics"] = state
            try:
                yield state
            finally:
                for cache in caches.values():
                    await cache.aclose()
                    await cache.cache.aclose()
                await default_pool.aclose()
                await shared["raw"].close()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _run_lifespan(lifespan, scope, receive, send)
            return
        path: str = scope.get("path", "")
        for prefix, target in prefixes:
            if path.startswith(prefix):
                await target(scope, receive, send)
                return
        head = path[: path.find("/", 1)]
        variant = variants.get(head)
        if variant is not None:
            scope = {**scope, "path": path[len(head) :], "state": variant}
        await targets.get(head, service)(scope, receive, send)

    return app


async def _run_lifespan(lifespan: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Speak the ASGI lifespan protocol around ``lifespan()``, sharing its state."""
    await receive()  # lifespan.startup
    try:
        context = lifespan()
        state = await context.__aenter__()
    except BaseException as exc:
        await send({"type": "lifespan.startup.failed", "message": repr(exc)})
        raise
    scope.setdefault("state", {}).update(state)
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    await context.__aexit__(None, None, None)
    await send({"type": "lifespan.shutdown.complete"})
