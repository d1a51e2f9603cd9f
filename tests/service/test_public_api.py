"""What ``import service`` offers is a deliberate contract: this pins it."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_all_is_sorted_and_every_name_exists() -> None:
    assert service.__all__ == sorted(service.__all__)
    for name in service.__all__:
        assert hasattr(service, name), name


def test_every_error_is_a_service_error() -> None:
    for name in service.__all__:
        value = getattr(service, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, service.ServiceError), name


def test_the_lazy_names_are_the_public_names() -> None:
    """Each public name is imported from its module on first use (``service._WHERE``)."""
    assert set(service._WHERE) == set(service.__all__) - {"__version__"}


HEAVY = ("starlette.applications", "alembic", "sqlalchemy.orm", "aioprometheus")


@pytest.mark.parametrize("part", ["service", "service.cache", "service.model", "service.errors"])
def test_importing_a_part_loads_only_that_part(part: str) -> None:
    """``import service.cache`` must not pay for the web app, the migrations, the ORM or
    the metrics: a fresh interpreter, so nothing else imported them first."""
    code = f"import sys, {part}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"import {part} loaded {loaded}"


def test_the_app_still_comes_from_the_root() -> None:
    code = "import service; print(service.create_app.__module__, service.ResultStore.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["service.app", "service.db.result_store"]
