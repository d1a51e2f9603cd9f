"""The one exception family that ``service`` raises.

Errors of the libraries underneath (asyncpg, SQLAlchemy, aiosqlite) are translated at
the boundary, so a caller catches these and nothing else::

    ServiceError
    ├── ConfigurationError        a setting is missing or malformed (names the variable)
    ├── ClosedError               a pool, store or cache was used after aclose()
    ├── CacheError
    │   ├── InvalidCacheArgument  a bad key, namespace or TTL (also a ValueError)
    │   ├── CacheSerializationError  a value orjson cannot serialize (also a TypeError)
    │   └── CacheUnavailable      an explicit invalidation could not reach the backend
    ├── DatabaseError
    │   ├── DatabaseUnavailable   the database cannot be reached; retry later
    │   └── PoolExhausted         every pooled connection stayed busy for DB_POOL_TIMEOUT
    ├── OptimizerError            maintenance could not run as asked
    │   ├── MaintenanceRunning    another caller or replica is maintaining right now
    │   ├── UnknownTable          not one of the database's tables (also a ValueError)
    │   └── InvalidOperation      not analyze or vacuum (also a ValueError)
    └── ResultError
        ├── InvalidAnalysisId     not 1-128 characters of A-Z a-z 0-9 . _ -
        ├── InvalidResult         not a JSON object, or a value the database refuses
        │   ├── MalformedJSON     not JSON at all
    │   └── ResultTooLarge    stored, it would exceed the size limit (JSONB writes
    │                         numbers in full: 1e-300 takes 302 characters)
        ├── ResultNotFound        no live result under that id
        └── PreconditionFailed    an If-Match / If-None-Match condition did not hold

``DatabaseUnavailable`` and ``PoolExhausted`` carry ``retry_after`` (seconds), which
the HTTP layer sends as ``Retry-After`` with its 503.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of every error ``service`` raises on purpose."""


class ConfigurationError(ServiceError):
    """A setting is missing or malformed; ``variable`` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


class InvalidArgument(ServiceError, ValueError):
    """An argument outside what the call accepts (a page size, a version, a bound)."""


class ClosedError(ServiceError):
    """The object was used after ``aclose()``."""


class CacheError(ServiceError):
    """A cache call was used wrongly, or an invalidation could not be carried out.

    Outages never raise from reads and writes (the cache fails open there); only an
    explicit invalidation raises :class:`CacheUnavailable`, since its caller must know.
    """


class InvalidCacheArgument(CacheError, InvalidArgument):
    """A key, namespace or TTL the cache does not accept."""


class CacheSerializationError(CacheError, TypeError):
    """A value that the cache's one serialization (orjson) cannot represent."""


class CacheUnavailable(CacheError):
    """The cache backend could not be reached, so an invalidation did not happen."""

    retry_after = 2


class DatabaseError(ServiceError):
    """The database could not serve the request; ``retry_after`` says when to try again."""

    retry_after: int = 1

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class DatabaseUnavailable(DatabaseError):
    """The database is unreachable (refused, timed out, restarting).

    Raised fast instead of hanging; the pool reconnects by itself once the
    database is back, so the caller only has to retry.
    """

    retry_after = 2


class PoolExhausted(DatabaseError):
    """No pooled connection became free within ``DB_POOL_TIMEOUT`` seconds."""

    retry_after = 1


class OptimizerError(ServiceError):
    """Maintenance could not run as asked."""


class MaintenanceRunning(OptimizerError):
    """Another caller (this process or another replica) is maintaining right now."""


class UnknownTable(OptimizerError, ValueError):
    """A table name that is not one of the database's own tables."""


class InvalidOperation(OptimizerError, ValueError):
    """An operation other than ``analyze`` or ``vacuum``."""


class ResultError(ServiceError):
    """A request about one result could not be honoured as asked."""


class InvalidAnalysisId(ResultError, ValueError):
    """The analysis id is not 1 to 128 characters of ``A-Z a-z 0-9 . _ -``."""


class InvalidResult(ResultError, ValueError):
    """The document is not a JSON object, or holds a value the database refuses."""


class MalformedJSON(InvalidResult):
    """The document is not well-formed UTF-8 JSON."""


class ResultTooLarge(InvalidResult):
    """The document, as the database would store and serve it, exceeds the size limit.

    ``size`` is that stored size in bytes (None when not known) and ``limit`` the limit.
    """

    def __init__(self, message: str, *, size: int | None, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class ResultNotFound(ResultError, LookupError):
    """No live result is stored under that analysis id."""


class PreconditionFailed(ResultError):
    """A conditional write found another version than the caller expected."""
