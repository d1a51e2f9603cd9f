"""service: an asyncio results API, and the SDK it is built from.

Everything a user imports is re-exported here; ``__all__`` is the public contract
(a test pins it)::

    from service import ConnectionPool, ResultStore

    async with ConnectionPool("postgresql+asyncpg://app@db/results") as pool:
        store = ResultStore(pool)
        await store.put("run-42", {"score": 0.93})

Importing the package (or any part of it) loads only what is used: each name below is
imported from its module on first access, so ``from service.cache import CacheManager``
does not pay for the web framework, the migrations or the ORM.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from service._version import __version__

if TYPE_CHECKING:
    from service.app import create_app
    from service.cache import (
        CachedRead,
        CacheManager,
        CacheStats,
        CircuitBreaker,
        MemoryBackend,
        RedisBackend,
        ResultCache,
        ResultCacheStats,
    )
    from service.cache.local import LocalCache
    from service.config import Settings
    from service.core.compression import CompressionMiddleware, CompressionStats
    from service.db.diagnostics import Thresholds
    from service.db.optimization import MaintenanceRun, QueryOptimizer
    from service.db.pool import ConnectionPool, PoolStats
    from service.db.report import Report
    from service.db.result_store import ResultStore
    from service.errors import (
        CacheError,
        CacheSerializationError,
        CacheUnavailable,
        ClosedError,
        ConfigurationError,
        DatabaseError,
        DatabaseUnavailable,
        InvalidAnalysisId,
        InvalidArgument,
        InvalidCacheArgument,
        InvalidOperation,
        InvalidResult,
        MaintenanceRunning,
        MalformedJSON,
        OptimizerError,
        PoolExhausted,
        PreconditionFailed,
        ResultError,
        ResultNotFound,
        ServiceError,
        UnknownTable,
    )
    from service.model import Absent, Page, ResultMeta, StoredResult, WriteOutcome
    from service.monitoring.performance import PerformanceMonitor

_WHERE: dict[str, str] = {
    "Absent": "service.model",
    "CacheError": "service.errors",
    "CacheManager": "service.cache",
    "CacheSerializationError": "service.errors",
    "CacheStats": "service.cache",
    "CacheUnavailable": "service.errors",
    "CachedRead": "service.cache",
    "CircuitBreaker": "service.cache",
    "ClosedError": "service.errors",
    "CompressionMiddleware": "service.core.compression",
    "CompressionStats": "service.core.compression",
    "ConfigurationError": "service.errors",
    "ConnectionPool": "service.db.pool",
    "DatabaseError": "service.errors",
    "DatabaseUnavailable": "service.errors",
    "InvalidAnalysisId": "service.errors",
    "InvalidArgument": "service.errors",
    "InvalidCacheArgument": "service.errors",
    "InvalidOperation": "service.errors",
    "InvalidResult": "service.errors",
    "LocalCache": "service.cache.local",
    "MaintenanceRun": "service.db.optimization",
    "MaintenanceRunning": "service.errors",
    "MalformedJSON": "service.errors",
    "MemoryBackend": "service.cache",
    "OptimizerError": "service.errors",
    "Page": "service.model",
    "PerformanceMonitor": "service.monitoring.performance",
    "PoolExhausted": "service.errors",
    "PoolStats": "service.db.pool",
    "PreconditionFailed": "service.errors",
    "QueryOptimizer": "service.db.optimization",
    "RedisBackend": "service.cache",
    "Report": "service.db.report",
    "ResultCache": "service.cache",
    "ResultCacheStats": "service.cache",
    "ResultError": "service.errors",
    "ResultMeta": "service.model",
    "ResultNotFound": "service.errors",
    "ResultStore": "service.db.result_store",
    "ServiceError": "service.errors",
    "Settings": "service.config",
    "StoredResult": "service.model",
    "Thresholds": "service.db.diagnostics",
    "UnknownTable": "service.errors",
    "WriteOutcome": "service.model",
    "create_app": "service.app",
}
"""Each public name and the module that defines it."""


def __getattr__(name: str) -> Any:
    """Import a public name from its module when it is first used (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Absent",
    "CacheError",
    "CacheManager",
    "CacheSerializationError",
    "CacheStats",
    "CacheUnavailable",
    "CachedRead",
    "CircuitBreaker",
    "ClosedError",
    "CompressionMiddleware",
    "CompressionStats",
    "ConfigurationError",
    "ConnectionPool",
    "DatabaseError",
    "DatabaseUnavailable",
    "InvalidAnalysisId",
    "InvalidArgument",
    "InvalidCacheArgument",
    "InvalidOperation",
    "InvalidResult",
    "LocalCache",
    "MaintenanceRun",
    "MaintenanceRunning",
    "MalformedJSON",
    "MemoryBackend",
    "OptimizerError",
    "Page",
    "PerformanceMonitor",
    "PoolExhausted",
    "PoolStats",
    "PreconditionFailed",
    "QueryOptimizer",
    "RedisBackend",
    "Report",
    "ResultCache",
    "ResultCacheStats",
    "ResultError",
    "ResultMeta",
    "ResultNotFound",
    "ResultStore",
    "ServiceError",
    "Settings",
    "StoredResult",
    "Thresholds",
    "UnknownTable",
    "WriteOutcome",
    "__version__",
    "create_app",
]
