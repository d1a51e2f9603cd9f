"""What every request finds in its ASGI state: the running service's parts, typed.

The app's lifespan fills it (:func:`service.app.create_app`); routes and middleware
read it through :func:`state_of`, so each part has one name and one type everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict, cast

from starlette.requests import HTTPConnection
from starlette.types import Scope

if TYPE_CHECKING:
    from service.api.caching import ReadHeaders
    from service.cache.result_cache import ResultCache
    from service.config import Settings
    from service.core.compression import CompressionStats
    from service.db.optimization import QueryOptimizer
    from service.db.pool import ConnectionPool
    from service.db.result_store import ResultStore
    from service.monitoring.performance import PerformanceMonitor


class State(TypedDict):
    """The parts of :class:`service.wiring.Parts`, and the app's own statistics."""

    settings: Settings
    pool: ConnectionPool
    store: ResultStore
    result_cache: ResultCache
    optimizer: QueryOptimizer
    compression: CompressionStats
    monitor: PerformanceMonitor
    read_headers: ReadHeaders


def state_of(request: HTTPConnection | Scope) -> State:
    """The state of the app serving ``request`` (a Request, or an ASGI scope)."""
    scope = request.scope if isinstance(request, HTTPConnection) else request
    return cast(State, scope["state"])
