"""The benchmark's server: the full service plus its references, in one process.

A tiny path dispatcher (no framework in the way) sends

* ``/asgi/doc``       to a raw ASGI callable (no framework at all) sending the stored
                      document's bytes with prebuilt headers: the server's own limit;
* ``/asgi-hit/doc``   to the same callable sending an L1 hit's own header block,
                      captured once from the service: the server's limit for that response;
* ``/bare/doc``       to a bare Starlette endpoint returning the stored document's bytes;
* ``/bare-gzip/doc``  to the same endpoint behind Starlette's GZipMiddleware (the peer);
* ``/cashews/doc``    to a bare Starlette endpoint whose body comes from a function under
                      cashews' ``@cache`` on the same Redis (keys under ``CACHE_PREFIX``):
                      every request a Redis round trip, as a cashews user has it. Served
                      only when cashews is installed (the ``bench`` extra);
* ``/raw/{id}``       to the same query on asyncpg's own pool (the driver's limit);
* ``/raw-list``       to the page ``GET /results?limit=100`` sends, built from the raw
                      asyncpg pool and orjson;
* ``/raw-put/{id}``   to the service's upsert on the raw asyncpg pool, the body checked
                      with orjson.loads and the same JSON answer, 201 or 200;
* ``/engine/{id}``    to ResultStore.get on the service's ConnectionPool, in the same bare
                      endpoint, so engine vs raw compares the database layers only;
* ``/engine-default/{id}`` the same on a second pool with the default sizes (20 + 10
                      overflow), to show what a pool smaller than the load costs;
* ``/bench/queries``  to the number of SQL statements the service has run so far;
* ``/bench/levels``   to the compression levels the service was configured with;
* ``/redis-only/...``, ``/miss/...``, ``/no-cache/...`` to the service's routes with a
                      ResultCache of their own (same pool, same store): Redis without L1;
                      Redis entries that expire after 1 ms (every read a full miss: Redis
                      GET, PostgreSQL, compare-and-set fill); and a cache with no room;
* ``/no-metrics/...`` to the service built without its monitoring middleware (the same
                      cache, hit path and compression layer): what metrics cost,
                      against ``/with-metrics/...``, the service itself behind the same
                      path rewriting;
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
import importlib
import importlib.util
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import wiring
from service.app import create_app
from service.cache.backends import MemoryBackend
from service.cache.manager import CacheManager
from service.cache.result_cache import ResultCache
from service.config import Settings
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore

DOCUMENT_ID = "bench-doc"
RAW_QUERY = (
    "SELECT result::text, version, created_at, updated_at FROM results"
    " WHERE analysis_id = $1 AND result IS NOT NULL"
)
RAW_LIST = (
    "SELECT analysis_id, version, created_at, updated_at FROM results"
    " WHERE result IS NOT NULL ORDER BY analysis_id LIMIT $1"
)
RAW_UPSERT = (
    "INSERT INTO results (analysis_id, result, version, created_at, updated_at)"
    " VALUES ($1, $2::jsonb, 1, $3, $3)"
    " ON CONFLICT (analysis_id) DO UPDATE SET result = excluded.result,"
    " version = results.version + 1,"
    " created_at = CASE WHEN results.result IS NULL THEN excluded.created_at"
    " ELSE results.created_at END,"
    " updated_at = excluded.updated_at"
    " RETURNING version, created_at, updated_at, result::text"
)
"""The service's PUT without preconditions (``_Statements.upsert``), in plain SQL."""
RAW_PAGE_DEFAULT, RAW_PAGE_MAX = 100, 1000

CASHEWS_INSTALLED = importlib.util.find_spec("cashews") is not None
"""Whether ``/cashews/doc`` is served (``pip install 'service[bench]'``)."""
CASHEWS_TTL = "1h"


def create_bench_app() -> ASGIApp:
    """The dispatcher described in the module docstring (a uvicorn ``--factory``)."""
    settings = Settings.from_environ()
    service = create_app(settings)
    shared: dict[str, Any] = {"queries": 0}

    async def document() -> bytes | None:
        """The bytes the service sends for the document, read once (on first use)."""
        body: bytes | None = shared.get("document")
        if body is None:
            store: ResultStore = shared["store"]
            stored = await store.get(DOCUMENT_ID)
            if stored is None:
                return None
            body = shared["document"] = stored.body
        return body

    async def bare(request: Request) -> Response:
        body = await document()
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type="application/json")

    async def asgi_doc(scope: Scope, receive: Receive, send: Send) -> None:
        """No framework at all: two messages, built once, sent as they are."""
        messages: tuple[Message, Message] | None = shared.get("asgi")
        if messages is None:
            body = await document()
            if body is None:
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            messages = shared["asgi"] = (
                {"type": "http.response.start", "status": 200, "headers": headers},
                {"type": "http.response.body", "body": body},
            )
        await send(messages[0])
        await send(messages[1])

    async def asgi_hit(scope: Scope, receive: Receive, send: Send) -> None:
        """The raw callable again, sending the hit's own header block (ETag,
        Last-Modified, Vary, Cache-Control, Cache-Status ...), captured once from an L1
        hit of the service: what the server itself costs for the response a hit sends."""
        messages: tuple[Message, Message] | None = shared.get("asgi-hit")
        if messages is None:
            captured: list[Message] = []

            async def capture(message: Message) -> None:
                captured.append(message)

            read = {
                **scope,
                "path": f"/results/{DOCUMENT_ID}",
                "raw_path": f"/results/{DOCUMENT_ID}".encode(),
                "query_string": b"",
                "headers": [(b"host", b"bench"), (b"accept-encoding", b"identity")],
            }
            for _ in range(2):  # the first read may fill L1; the second is a hit
                captured.clear()
                await service(dict(read), receive, capture)
            start, body = captured[0], captured[-1]
            if dict(start["headers"]).get(b"x-cache") != b"HIT":
                await send(start)
                await send(body)
                return
            messages = shared["asgi-hit"] = (start, body)
        await send(messages[0])
        await send(messages[1])

    async def raw(request: Request) -> Response:
        async with shared["raw"].acquire() as conn:
            row = await conn.fetchrow(RAW_QUERY, request.path_params["id"])
        if row is None:
            return Response(status_code=404)
        return Response(row[0].encode(), media_type="application/json")

    async def raw_list(request: Request) -> Response:
        """A page of ``GET /results``: asyncpg's rows, serialized by orjson."""
        raw_limit = request.query_params.get("limit", str(RAW_PAGE_DEFAULT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= RAW_PAGE_MAX:
            return Response(status_code=422)
        limit = int(raw_limit)
        async with shared["raw"].acquire() as conn:
            rows = await conn.fetch(RAW_LIST, limit + 1)
        items = [
            {"analysis_id": r[0], "version": r[1], "created_at": r[2], "updated_at": r[3]}
            for r in rows[:limit]
        ]
        page = {"items": items, "next": items[-1]["analysis_id"] if len(rows) > limit else None}
        # asyncpg's datetimes are in UTC: orjson writes them RFC 3339 with a Z, as the
        # service does (with the microseconds, unless they are all zero).
        return Response(orjson.dumps(page, option=orjson.OPT_UTC_Z), media_type="application/json")

    async def raw_put(request: Request) -> Response:
        """The service's unconditional PUT, checked as the service checks it: UTF-8, an
        object at the top (the first character), the rest parsed by JSONB; one upsert."""
        analysis_id = request.path_params["id"]
        body = await request.body()
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return Response(status_code=400)
        if not text.lstrip(" \t\n\r").startswith("{"):
            return Response(status_code=422)
        now = datetime.now(UTC)
        async with shared["raw"].acquire() as conn:
            try:
                version, created_at, updated_at, _ = await conn.fetchrow(
                    RAW_UPSERT, analysis_id, text, now
                )
            except asyncpg.InvalidTextRepresentationError:
                return Response(status_code=400)
        content = {"analysis_id": analysis_id, "version": version, "updated_at": updated_at}
        return Response(
            orjson.dumps(content, option=orjson.OPT_UTC_Z),
            201 if created_at == now else 200,
            headers={"ETag": f'"{version}"'},
            media_type="application/json",
        )

    async def engine(request: Request) -> Response:
        store: ResultStore = shared["default_store" if "default" in request.url.path else "store"]
        stored = await store.get(request.path_params["id"])
        if stored is None:
            return Response(status_code=404)
        return Response(stored.body, media_type="application/json")

    async def queries(request: Request) -> Response:
        return JSONResponse({"queries": shared["queries"]})

    async def levels(request: Request) -> Response:
        return JSONResponse(settings.compression_levels)

    engine_app = Starlette(
        routes=[Route("/engine/{id}", engine), Route("/engine-default/{id}", engine)]
    )
    # Keyed by the path's first segment: one dict lookup per request, whatever the row.
    heads: dict[str, ASGIApp] = {
        "/asgi": asgi_doc,
        "/asgi-hit": asgi_hit,
        "/bare": Starlette(routes=[Route("/bare/doc", bare)]),
        "/bare-gzip": GZipMiddleware(Starlette(routes=[Route("/bare-gzip/doc", bare)])),
        "/raw": Starlette(routes=[Route("/raw/{id}", raw)]),
        "/raw-list": Starlette(routes=[Route("/raw-list", raw_list)]),
        "/raw-put": Starlette(routes=[Route("/raw-put/{id}", raw_put, methods=["PUT"])]),
        "/engine": engine_app,
        "/engine-default": engine_app,
        "/bench": Starlette(
            routes=[Route("/bench/queries", queries), Route("/bench/levels", levels)]
        ),
    }

    # cashews, when installed: its @cache on the service's Redis, under this run's prefix.
    cashews_cache: Any = None
    if CASHEWS_INSTALLED and settings.redis_url is not None:
        cashews_cache = importlib.import_module("cashews").Cache(name="bench")
        cashews_keys = f"{settings.cache_prefix}:cashews:"

        async def load_document() -> bytes | None:
            """What a cashews user puts under @cache: the read from the database."""
            store: ResultStore = shared["store"]
            stored = await store.get(DOCUMENT_ID)
            return None if stored is None else stored.body

        cached_document: Callable[[], Awaitable[bytes | None]] = cashews_cache(
            ttl=CASHEWS_TTL, key=f"{cashews_keys}{DOCUMENT_ID}"
        )(load_document)

        async def cashews_doc(request: Request) -> Response:
            body = await cached_document()  # a Redis GET (and unpickling) every time
            if body is None:
                return Response(status_code=404)
            return Response(body, media_type="application/json")

        heads["/cashews"] = Starlette(routes=[Route("/cashews/doc", cashews_doc)])

    variants: dict[str, dict[str, Any]] = {}
    # The route pre-encodes only the codings COMPRESSION_ENCODINGS offers: none here, and
    # the service's own compression layer passes everything through to the peer's.
    peer_settings = dataclasses.replace(settings, compression_encodings=())
    targets: dict[str, ASGIApp] = {
        "/no-metrics": create_app(settings, monitoring=False),
        "/with-metrics": service,
        "/gzip-peer": GZipMiddleware(create_app(peer_settings, hit_path=False, monitoring=False)),
    }

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[dict[str, Any]]:
        async with service.router.lifespan_context(service) as maybe_state:
            state: dict[str, Any] = dict(maybe_state or {})
            shared["store"] = state["store"]

            # The service's store reports each database operation it runs (the raw
            # asyncpg pool is not the store's, so it is not counted).
            store: ResultStore = state["store"]
            timed = store.on_query

            def count(operation: str, seconds: float) -> None:
                shared["queries"] += 1
                if timed is not None:
                    timed(operation, seconds)

            store.on_query = count

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
                "/redis-only": wiring.result_cache(no_l1, store, wiring.cache_manager(no_l1)),
                "/miss": ResultCache(wiring.cache_manager(no_l1), store, ttl=0.001),
                "/no-cache": ResultCache(CacheManager(MemoryBackend(0)), store),
            }
            for prefix, cache in caches.items():
                await cache.start()
                variants[prefix] = {**state, "result_cache": cache}
            variants["/gzip-peer"] = {**state, "settings": peer_settings}
            variants["/no-metrics"] = state
            variants["/with-metrics"] = state
            if cashews_cache is not None:
                # The backend's prefix routes keys to it; the keys themselves carry it.
                cashews_cache.setup(settings.redis_url, prefix=cashews_keys)
                await cashews_cache.init()
            try:
                yield state
            finally:
                if cashews_cache is not None:
                    with warnings.catch_warnings():
                        # cashews closes its redis client with close(), which redis-py
                        # 5+ deprecates in favour of aclose().
                        warnings.simplefilter("ignore", DeprecationWarning)
                        await cashews_cache.close()
                for cache in caches.values():
                    await cache.aclose()
                    await cache.cache.aclose()
                await default_pool.aclose()
                await shared["raw"].close()

    class Dispatcher:
        @property
        def hit_path(self) -> Any:
            """The service's: ``/results/...`` reaches it unchanged, so the server may
            answer its hits itself, as it does under ``service serve``."""
            return getattr(service, "hit_path", None)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await _run_lifespan(lifespan, scope, receive, send)
                return
            path: str = scope.get("path", "")
            slash = path.find("/", 1)
            head = path if slash < 0 else path[:slash]
            reference = heads.get(head)
            if reference is not None:
                await reference(scope, receive, send)
                return
            variant = variants.get(head)
            if variant is not None:
                scope = {**scope, "path": path[len(head) :], "state": variant}
            await targets.get(head, service)(scope, receive, send)

    return Dispatcher()


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
