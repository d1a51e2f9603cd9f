"""create_app(settings) -> Starlette: the HTTP service, its resources owned by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from time import perf_counter
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import admin, health, metrics, openapi, result_routes
from service.api.caching import NoStoreByDefault, ReadHeaders
from service.api.reads import HitPath
from service.api.responses import Problem, answer_cancelled, handle_exception
from service.api.state import State
from service.api.writes import WritePath
from service.config import Settings
from service.core.compression import CompressionMiddleware, CompressionStats
from service.errors import ServiceError
from service.monitoring.performance import MonitoringMiddleware, PerformanceMonitor
from service.wiring import running

if TYPE_CHECKING:
    from service.tracing import Tracing

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    hit_path: bool = True,
    monitoring: bool = True,
    tracing: Tracing | None = None,
) -> Starlette:
    """The service as an ASGI app; ``settings`` default to :meth:`Settings.from_environ`.

    ``hit_path=False`` sends every read and write through the framework: the reference
    that the hit path (:class:`~service.api.reads.HitPath`) and the write path
    (:class:`~service.api.writes.WritePath`) are tested against, byte for byte.
    ``monitoring=False`` leaves the metrics layer out: the reference its cost is
    measured against. With OTEL_EXPORTER_OTLP_ENDPOINT set (or a started ``tracing``)
    every request is traced (:mod:`service.tracing`); the app's shutdown ends it.

    Nothing is opened until the ASGI lifespan starts: then the pool is created, pending
    migrations are applied (``MIGRATE_ON_START``), the cache is opened and starts
    listening for other replicas' writes; on shutdown both are closed.
    """
    settings = settings or Settings.from_environ()
    if tracing is None and settings.otel_exporter_otlp_endpoint:
        from service.tracing import start_tracing

        tracing = start_tracing(settings)
    compression = CompressionStats()
    monitor = PerformanceMonitor()
    monitor.watch_compression(compression)
    read_headers = ReadHeaders(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with contextlib.AsyncExitStack() as stack:
            if tracing is not None:
                stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
            parts = await stack.enter_async_context(running(settings, monitor))
            _freeze_what_start_up_made()
            yield {
                "settings": parts.settings,
                "pool": parts.pool,
                "store": parts.store,
                "result_cache": parts.results,
                "optimizer": parts.optimizer,
                "compression": compression,
                "monitor": monitor,
                "read_headers": read_headers,
            }

    routes = [*result_routes.routes, *health.routes, *admin.routes, *openapi.routes]
    if settings.metrics_port is None:
        routes += metrics.routes
    # Outside Starlette's error middleware, so a hit pays for nothing it does not use;
    # an unhandled error still becomes the 500 that the monitoring layer counts.
    outer = []
    if tracing is not None:
        outer.append(Middleware(tracing.wrap))  # a span around everything, hits included
    if hit_path:
        # Reads of one result, answered before anything else runs: the same bytes as
        # the route, recorded in the same metrics series.
        outer.append(
            Middleware(
                HitPath,
                encodings=settings.compression_encodings,
                read_headers=read_headers,
                levels=settings.compression_levels,
                minimum_size=settings.compression_min_size,
                stats=compression,
                monitor=monitor if monitoring else None,
            )
        )
        # Plain writes of one result, likewise (service.api.writes).
        outer.append(
            Middleware(
                WritePath,
                minimum_size=settings.compression_min_size,
                monitor=monitor if monitoring else None,
            )
        )
    # Inside the fast paths, whose answers carry their policy already.
    outer.append(Middleware(NoStoreByDefault))
    if monitoring:
        # The time includes compression, the status is what is sent.
        outer.append(Middleware(MonitoringMiddleware, monitor=monitor, routes=routes))
    return ServiceApp(
        outer=outer,
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                CompressionMiddleware,
                encodings=settings.compression_encodings,
                minimum_size=settings.compression_min_size,
                levels=settings.compression_levels,
                stats=compression,
            ),
        ],
        # Each class listed before Exception is answered by Starlette's exception
        # middleware and goes no further; what reaches the Exception entry is a 500,
        # logged with its traceback, and re-raised to the server. ClientDisconnect
        # (a client gone mid-body, wherever the body was read) is a 499, not a 500.
        exception_handlers={
            HTTPException: handle_exception,
            Problem: handle_exception,
            ServiceError: handle_exception,
            ClientDisconnect: handle_exception,
            Exception: handle_exception,
        },
    )


class ServiceApp(Starlette):
    """Starlette, with ``outer`` middleware wrapped around its whole stack (its
    ``middleware`` runs inside the error handling, as usual)."""

    def __init__(self, *, outer: Sequence[Middleware], **options: Any) -> None:
        self.outer = list(outer)
        super().__init__(**options)

    @property
    def hit_path(self) -> HitPath | None:
        """The hit path, once built, when it is the app's outermost layer.

        The HTTP server (:mod:`service.server`) then hands it the reads it may answer
        from L1 before any ASGI runs: nothing outside the hit path would have run for
        them anyway. With tracing on, a span wraps every request, so there is none.
        """
        stack = self.middleware_stack
        return stack if isinstance(stack, HitPath) else None

    def build_middleware_stack(self) -> ASGIApp:
        # CancelledRequests right around the framework: inside the hit path, which
        # answers a cancelled read of its own alike, so a hit does not pay for it.
        app: ASGIApp = CancelledRequests(super().build_middleware_stack())
        for cls, args, kwargs in reversed(self.outer):
            app = cls(app, *args, **kwargs)
        return app


class CancelledRequests:
    """Pure ASGI: a request cancelled under the app is one WARNING line and a 503.

    uvicorn cancels the requests still running ``timeout_graceful_shutdown`` seconds
    after SIGTERM; Starlette's error handling catches ``Exception`` only, so the
    ``CancelledError`` went on to uvicorn, which logged it as an ERROR with a full
    traceback and answered a plain-text 500. A shutdown is an operator's decision and a
    slow client's request is no fault of the service: so one WARNING line here (method,
    path, time; no traceback, which would only say where the request waited), a 503
    problem with ``Retry-After`` and ``Connection: close`` when nothing was sent yet (the
    client should retry, on another replica), and the cancellation re-raised, as asyncio
    requires. :class:`service.logs.ShutdownCancellations` drops uvicorn's traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def watch(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        started = perf_counter()
        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:
            await answer_cancelled(scope, receive, send, started=started, answered=answered)
            raise


def _freeze_what_start_up_made() -> None:
    """Leave everything start-up made out of the garbage collector's full passes.

    Modules, SQLAlchemy's compiled statements, the pool and the routes live as long as
    the process, yet every full collection walked them all: a pause of about 60 ms that
    stalled every request in flight, several times a minute under load, and made the
    p99 of a database read three times the raw asyncpg pool's. ``gc.freeze`` (the
    documented way, for servers that start once) moves them to a permanent generation;
    a collection first, so no start-up garbage is kept. Objects made later (cache
    entries, connections) are collected as usual.
    """
    gc.collect()
    gc.freeze()
