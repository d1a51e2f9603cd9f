"""The one place that builds the service's parts from :class:`~service.config.Settings`.

The parts themselves (the pool, the store, the cache, the optimizer) take plain
arguments and know nothing of settings; this module reads the settings and connects
them. :func:`running` opens everything the HTTP service needs, in order, and closes it
in reverse: the app's lifespan, the CLI and the bench all start the service through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from service.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.result_cache import L1, ResultCache, SharedZstd
from service.config import Settings
from service.db.migrations import upgrade
from service.db.optimization import QueryOptimizer, maintain_periodically
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.monitoring.exposition import MetricsListener
from service.monitoring.performance import PerformanceMonitor
from service.monitoring.workers import worker_set

logger = logging.getLogger(__name__)


def connection_pool(settings: Settings) -> ConnectionPool:
    """A pool configured by ``DATABASE_URL`` and the ``DB_*`` settings."""
    return ConnectionPool(
        settings.database,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pre_ping=settings.db_pool_pre_ping,
        connect_timeout=settings.db_connect_timeout,
        statement_timeout=settings.db_statement_timeout,
    )


def result_store(settings: Settings, pool: ConnectionPool) -> ResultStore:
    """The results table behind ``pool``, documents bounded by ``MAX_RESULT_BYTES``."""
    return ResultStore(pool, max_document_bytes=settings.max_result_bytes)


def cache_manager(settings: Settings) -> CacheManager:
    """Redis at ``REDIS_URL`` (``REDIS_*``), or process memory bounded by
    ``L1_MAX_BYTES`` without it; keys under ``CACHE_PREFIX``, ``RESULT_TTL`` by default."""
    backend: CacheBackend
    if settings.redis_url:
        backend = RedisBackend(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout,
        )
    else:
        backend = MemoryBackend(settings.l1_max_bytes)
    return CacheManager(backend, prefix=settings.cache_prefix, default_ttl=settings.result_ttl)


def result_cache(settings: Settings, store: ResultStore | None, cache: CacheManager) -> ResultCache:
    """The results' two tiers over ``cache``: L1 (unless ``L1_MAX_BYTES`` is 0) in front."""
    l1: L1 | None = LocalCache(settings.l1_max_bytes) if settings.l1_max_bytes > 0 else None
    return ResultCache(
        cache,
        store,
        ttl=settings.result_ttl,
        l1=l1,
        l1_ttl=settings.l1_ttl,
        stale_if_error=settings.stale_if_error,
        zstd=SharedZstd(settings.compression_zstd_level, settings.compression_min_size),
    )


def query_optimizer(settings: Settings, pool: ConnectionPool) -> QueryOptimizer:
    """An optimizer bounded by ``DB_LOCK_TIMEOUT`` and ``DB_MAINTENANCE_TIMEOUT``."""
    return QueryOptimizer(
        pool,
        lock_timeout=settings.db_lock_timeout,
        statement_timeout=settings.db_maintenance_timeout,
    )


@dataclass(frozen=True, slots=True)
class Parts:
    """What a running service holds; each request finds these in ``request.state``."""

    settings: Settings
    pool: ConnectionPool
    store: ResultStore
    results: ResultCache
    optimizer: QueryOptimizer


@contextlib.asynccontextmanager
async def running(
    settings: Settings, monitor: PerformanceMonitor | None = None
) -> AsyncIterator[Parts]:
    """Open the service's parts, yield them, and close them in reverse order.

    The pool opens first and pending migrations run (``MIGRATE_ON_START``); then the
    store, the cache (which reads the notes of unsynced writes and starts listening for
    other replicas), the optimizer and its periodic maintenance, and the metrics
    listener (``METRICS_PORT``). ``monitor`` is told about each part it watches, and
    under ``serve --workers N`` about the other workers (:mod:`service.monitoring.workers`).
    """
    async with contextlib.AsyncExitStack() as stack:
        pool = connection_pool(settings)
        stack.push_async_callback(pool.aclose)
        if settings.is_embedded_database:
            logger.info("using the embedded SQLite database at %s", settings.database.database)
        else:
            logger.info("using database %s", pool.safe_url)
        if settings.migrate_on_start:
            await upgrade(pool)
        store = result_store(settings, pool)
        cache = cache_manager(settings)
        stack.push_async_callback(cache.aclose)
        results = result_cache(settings, store, cache)
        stack.push_async_callback(results.aclose)
        optimizer = query_optimizer(settings, pool)
        if monitor is not None:
            monitor.watch_pool(pool)
            store.on_query = monitor.time_query
            monitor.watch_cache(cache)
            monitor.watch_results(results)
            monitor.watch_optimizer(optimizer)
        logger.info("cache: %s", cache.backend.name)
        await results.start()
        if settings.db_maintenance_interval > 0:
            maintenance = maintain_periodically(
                optimizer, settings.db_maintenance_operation, settings.db_maintenance_interval
            )
            await stack.enter_async_context(_background(maintenance))
        if monitor is not None:
            monitor.workers = await stack.enter_async_context(worker_set(monitor.text))
        if settings.metrics_port is not None and monitor is not None:
            listener = MetricsListener(monitor, settings.metrics_host, settings.metrics_port)
            await stack.enter_async_context(listener)
        yield Parts(settings, pool, store, results, optimizer)


@contextlib.asynccontextmanager
async def _background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``work`` as a task for the life of the block; cancel and await it on the way out."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
