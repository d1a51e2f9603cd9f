"""service: an asyncio results API, and the SDK it is built from.

Everything a user imports is re-exported here; ``__all__`` is the public contract
(a test pins it)::

    from service import ConnectionPool, ResultStore

    async with ConnectionPool("postgresql+asyncpg://app@db/results") as pool:
        store = ResultStore(pool)
        await store.put("run-42", {"score": 0.93})
"""

from __future__ import annotations

__version__ = "0.1.0"  # before the imports: service.api.openapi reads it

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
from service.db.results import Absent, Page, ResultMeta, ResultStore, StoredResult, WriteOutcome
from service.errors import (
    CacheError,
    CacheSerializationError,
    CacheUnavailable,
    ClosedError,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidAnalysisId,
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
from service.monitoring.performance import PerformanceMonitor

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
