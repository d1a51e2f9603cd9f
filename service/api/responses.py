"""Responses and RFC 9457 problem details: the one error-to-HTTP mapper.

Every error leaves the service as ``application/problem+json`` with ``type``,
``title``, ``status`` and ``detail``. Problems specific to this service have a
``type`` under ``/problems/``; plain HTTP ones use ``about:blank`` as RFC 9457 asks.
Details never carry SQL, driver messages or settings: those go to the log only. Text
a client sent (a header, a path segment) is quoted through :func:`quoted`, which caps it,
and every detail is capped again at :data:`MAX_DETAIL`: an error must never cost what
the request that caused it did (a 1 MB If-Match once came back in a 1 MB 412).
"""

from __future__ import annotations

import contextlib
import logging
from http import HTTPStatus
from time import perf_counter
from typing import Any, Final

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service import errors
from service.logs import RateLimitedLog

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
MAX_QUOTED: Final = 64
"""Characters of client-supplied text a detail quotes; the rest becomes an ellipsis."""
MAX_DETAIL: Final = 512
"""Characters of any detail: a last bound for a message quoting more than it should."""
CLIENT_CLOSED_REQUEST: Final = 499
"""nginx's status for a client that went away before the answer: never sent, counted."""


def quoted(text: str, limit: int = MAX_QUOTED) -> str:
    """``text`` as a detail quotes it: ``repr`` (control characters escaped), at most
    ``limit`` characters of it, then an ellipsis."""
    if len(text) <= limit:
        return repr(text)
    shown = repr(text[:limit])
    return f"{shown[:-1]}\u2026{shown[-1]}"


def _capped(detail: str) -> str:
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 1] + "\u2026"


class JSONResponse(Response):
    """A JSON response rendered with orjson (the service's one serializer)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RawResponse(Response):
    """A response whose header block was built beforehand: sent as it is, nothing added."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.raw_headers = raw_headers
        self.body = body
        self.background = None


class Problem(Exception):
    """Raised by a route to answer with a problem+json response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        detail = _capped(detail)
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extensions = extensions

    def response(self) -> Response:
        body: dict[str, Any] = {
            "type": f"/problems/{self.slug}" if self.slug else "about:blank",
            "title": _title(self.slug, self.status),
            "status": self.status,
            "detail": self.detail,
            **self.extensions,
        }
        return Response(
            orjson.dumps(body), self.status, headers=self.headers, media_type=PROBLEM_MEDIA_TYPE
        )


# The problem types of this service: the same title for every occurrence of a type.
TITLES = {
    "bad-precondition": "Unsupported precondition header",
    "bad-request": "Bad request",
    "client-closed-request": "Client closed request",
    "cache-unavailable": "Cache unavailable",
    "database-unavailable": "Database unavailable",
    "forbidden": "Forbidden",
    "invalid-analysis-id": "Invalid analysis id",
    "invalid-parameter": "Invalid query parameter",
    "invalid-request": "Invalid request",
    "invalid-result": "Invalid result document",
    "maintenance-running": "Maintenance already running",
    "malformed-json": "Malformed JSON",
    "not-ready": "Not ready",
    "payload-too-large": "Result too large",
    "pool-exhausted": "Database connections exhausted",
    "precondition-failed": "Precondition failed",
    "request-timeout": "Request timeout",
    "result-not-found": "Result not found",
    "shutting-down": "Shutting down",
    "result-too-large": "Stored result too large",
    "unauthorized": "Unauthorized",
    "unsupported-media-type": "Unsupported media type",
}


def _title(slug: str | None, status: int) -> str:
    return TITLES[slug] if slug else HTTPStatus(status).phrase


def problem_for(exc: Exception) -> Problem:
    """Map any exception to the problem the client sees."""
    match exc:
        case Problem():
            return exc
        case ClientDisconnect():
            return client_closed()
        case HTTPException():
            phrase = HTTPStatus(exc.status_code).phrase
            detail = (
                exc.detail
                if exc.detail and exc.detail != phrase
                else _DEFAULT_DETAIL.get(exc.status_code, phrase)
            )
            return Problem(exc.status_code, detail, headers=dict(exc.headers or {}))
        case errors.InvalidAnalysisId():
            return Problem(422, str(exc), slug="invalid-analysis-id")
        case errors.MalformedJSON():
            return Problem(400, str(exc), slug="malformed-json")
        case errors.ResultTooLarge():
            return Problem(413, str(exc), slug="result-too-large", limit=exc.limit)
        case errors.InvalidResult():
            return Problem(422, str(exc), slug="invalid-result")
        case errors.InvalidCacheArgument():
            return Problem(422, str(exc), slug="invalid-request")
        case errors.MaintenanceRunning():
            return Problem(409, str(exc), slug="maintenance-running")
        case errors.UnknownTable() | errors.InvalidOperation():
            return Problem(422, str(exc), slug="invalid-request")
        case errors.ResultNotFound():
            return Problem(404, str(exc), slug="result-not-found")
        case errors.PreconditionFailed():
            return Problem(412, str(exc), slug="precondition-failed")
        case errors.PoolExhausted():
            return _retry_later(
                exc, "pool-exhausted", "every database connection is busy; retry shortly"
            )
        case errors.CacheUnavailable():
            return _retry_later(
                exc, "cache-unavailable", "the cache is unavailable; nothing was invalidated"
            )
        case errors.DatabaseUnavailable():
            return _retry_later(
                exc, "database-unavailable", "the database is unavailable; retry shortly"
            )
        case _:
            return Problem(500, "the server failed to handle this request; it has been logged")


def client_closed() -> Problem:
    """The problem for a client that went away while its request was read: nobody
    reads the answer, but the monitoring layer counts its 499 (a 4xx, not a 5xx)."""
    return Problem(
        CLIENT_CLOSED_REQUEST,
        "the client closed the connection before sending the whole request",
        slug="client-closed-request",
    )


def _retry_later(
    exc: errors.DatabaseError | errors.CacheUnavailable, slug: str, detail: str
) -> Problem:
    """A 503 whose Retry-After comes from the error."""
    return Problem(503, detail, slug=slug, headers={"Retry-After": str(exc.retry_after)})


_DEFAULT_DETAIL = {
    404: "no such resource",
    405: "method not allowed on this resource",
}


_outage_warnings = RateLimitedLog(logger, interval=1.0)


async def handle_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: log what the client must not see, answer a problem."""
    problem = problem_for(exc)
    # A Problem is an answer a route chose (and logged, if it was worth a line): only
    # what the service did not expect is logged here.
    if problem.status >= 500 and not isinstance(exc, Problem):
        if isinstance(exc, errors.DatabaseError | errors.CacheUnavailable):
            # An outage fails every request: one line a second, with the count, is enough.
            _outage_warnings.warning(
                type(exc).__name__, "%s -> %d: %s", request.method, problem.status, exc
            )
        else:
            logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem.response()


async def answer_cancelled(
    scope: Scope, receive: Receive, send: Send, *, started: float, answered: bool
) -> None:
    """What a request cancelled under the app leaves: one WARNING line and, when nothing
    was sent yet, a 503 problem (see :class:`service.app.CancelledRequests`). The caller
    re-raises the cancellation, as asyncio requires."""
    logger.warning(
        "%s %.120r cancelled after %.3f s (server shutting down)%s",
        scope["method"][:16],
        scope["path"],  # the client's text: repr'd (no control characters), capped
        perf_counter() - started,
        "" if answered else "; answered 503",
    )
    if not answered:
        problem = Problem(
            503,
            "the server is shutting down; retry the request",
            slug="shutting-down",
            headers={"Retry-After": "1", "Connection": "close"},
        )
        with contextlib.suppress(Exception):  # the client may be gone already
            await problem.response()(scope, receive, send)
