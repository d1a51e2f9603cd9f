"""What ``import service`` offers is a deliberate contract: this pins it."""

from __future__ import annotations

import service


def test_all_is_pinned() -> None:
    assert service.__all__ == [
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


def test_all_is_sorted_and_every_name_exists() -> None:
    assert service.__all__ == sorted(service.__all__)
    for name in service.__all__:
        assert hasattr(service, name), name


def test_every_error_is_a_service_error() -> None:
    for name in service.__all__:
        value = getattr(service, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, service.ServiceError), name
