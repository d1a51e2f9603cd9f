"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.responses import JSONResponse, Problem
from service.api.state import state_of
from service.cache.result_cache import ResultCache
from service.errors import DatabaseError
from service.logs import RateLimitedLog

logger = logging.getLogger(__name__)

READINESS_TIMEOUT = 2.0

_not_ready_warnings = RateLimitedLog(logger, interval=1.0)
"""Probes hit /readyz every few seconds during an outage: one line a second at most, as
every other outage log (:func:`service.api.responses.handle_exception`)."""


async def healthz(request: Request) -> Response:
    """200 while the process serves requests: restart it only when this fails."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when the database answers within 2 s, else 503 (take it out of rotation).

    The cache is reported, not required: the service answers from the database
    without it. A 503 is logged as one WARNING line, rate-limited: the probe keeps
    asking all through an outage, and its traceback would say nothing new.
    """
    state = state_of(request)
    pool = state["pool"]
    checks = {"database": "ok", "cache": _cache_state(state["result_cache"])}
    try:
        async with asyncio.timeout(READINESS_TIMEOUT):
            await pool.ping()
    except (DatabaseError, TimeoutError) as exc:
        checks["database"] = "unavailable"
        reason = str(exc) or f"no answer within {READINESS_TIMEOUT:g} s"
        _not_ready_warnings.warning(
            "database",
            "not ready: the database is unavailable (%s: %s)",
            type(exc).__name__,
            reason,
        )
        raise Problem(
            503,
            "the database is unavailable",
            slug="not-ready",
            headers={"Retry-After": "2"},
            checks=checks,
        ) from None
    return JSONResponse({"status": "ready", "checks": checks, "pool": pool.stats().as_dict()})


def _cache_state(results: ResultCache) -> str:
    """``memory``, or the shared backend's breaker: ``closed`` is healthy."""
    cache = results.cache
    if cache.backend.name == "memory":
        return "memory"
    return f"{cache.backend.name} {cache.breaker.state.value}"


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
