"""create_app(settings) -> Starlette: the HTTP service, its resources owned by the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from service.api import admin, health, openapi, results
from service.api.responses import Problem, handle_exception
from service.cache.results import ResultCache
from service.config import Settings
from service.core.compression import CompressionMiddleware, CompressionStats
from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.results import ResultStore
from service.errors import ServiceError

logger = logging.getLogger(__name__)


class State(TypedDict):
    """What every request finds in ``request.state``."""

    settings: Settings
    pool: ConnectionPool
    store: ResultStore
    results: ResultCache
    compression: CompressionStats


def create_app(settings: Settings | None = None) -> Starlette:
    """The service as an ASGI app; ``settings`` default to :meth:`Settings.from_environ`.

    Nothing is opened until the ASGI lifespan starts: then the pool is created, pending
    migrations are applied (``MIGRATE_ON_START``), the cache is opened and starts
    listening for other replicas' writes; on shutdown both are closed.
    """
    settings = settings or Settings.from_environ()
    compression = CompressionStats()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        pool = ConnectionPool.from_settings(settings)
        try:
            if settings.is_embedded_database:
                logger.info("using the embedded SQLite database at %s", settings.database.database)
            else:
                logger.info("using database %s", pool.safe_url)
            if settings.migrate_on_start:
                await upgrade(pool)
            store = ResultStore(pool)
            cache = ResultCache.from_settings(settings, store)
            try:
                logger.info("cache: %s", cache.cache.backend.name)
                await cache.start()
                yield {
                    "settings": settings,
                    "pool": pool,
                    "store": store,
                    "results": cache,
                    "compression": compression,
                }
            finally:
                await cache.aclose()
        finally:
            await pool.aclose()

    return Starlette(
        routes=[*results.routes, *health.routes, *admin.routes, *openapi.routes],
        lifespan=lifespan,
        middleware=[
            Middleware(
                CompressionMiddleware,
                encodings=settings.compression_encodings,
                minimum_size=settings.compression_min_size,
                levels=settings.compression_levels,
                stats=compression,
            )
        ],
        exception_handlers={
            HTTPException: handle_exception,
            Problem: handle_exception,
            ServiceError: handle_exception,
            Exception: handle_exception,
        },
    )
