"""Writes of one result: what a ``PUT /results/{id}`` answers, and the write path that
answers it in front of the framework.

A write's own work (the upsert, the write-through to Redis) is the same wherever it
runs; what a plain PUT also paid for in the full stack was Starlette's routing,
``Request`` and ``Response`` objects and every middleware's wrapping of ``send``, for an
answer of three headers and a hundred bytes. :class:`WritePath` runs the write itself
when the request is plain, and its answer is the full stack's, byte for byte (a
differential test holds it to that):

* Anything the route would refuse before reading the body (an invalid id, a bad
  precondition header, a body not declared JSON) goes on to the full stack untouched,
  and so does a request the compression layer treats apart (``Range``,
  ``Cache-Control``).
* A write that fails (a 412, a body too large, a database outage, a client gone) goes
  on to the full stack with its error attached (:data:`WRITE_MADE`): the route raises
  it, so it is mapped, logged and counted exactly as it always was, and nothing is
  written twice. So does an answer the compression layer could encode (a
  ``COMPRESSION_MIN_SIZE`` below its size).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.body import declares_json, read_body
from service.api.caching import NO_STORE
from service.api.conditions import parse_if_match, parse_if_none_match_for_write
from service.api.reads import PREFIX, id_in_path
from service.api.responses import Problem, answer_cancelled
from service.model import IfMatch, is_analysis_id

if TYPE_CHECKING:
    from service.cache.result_cache import ResultCache
    from service.monitoring.performance import PerformanceMonitor, RequestSlot

WRITE_MADE: Final = "service.write_made"
"""Scope key: the write path's error, or its answer, for the route to send (see the
module docstring)."""

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""Status, header block (as the route's response starts it), body."""

_VARY: Final = (b"vary", b"Accept-Encoding")
_JSON: Final = (b"content-type", b"application/json")
_READ: Final = frozenset((b"content-type", b"content-length", b"if-match", b"if-none-match"))
"""The request headers a plain write is read from."""


async def write(
    results: ResultCache,
    analysis_id: str,
    body: bytes,
    *,
    if_match: IfMatch,
    create_only: bool,
) -> Answer:
    """Store ``body`` as the new version of ``analysis_id``; the answer to the PUT.

    No Last-Modified: a version is not sent with one during the second it was written
    in (see ReadyResult.settled), and this answer is always in that second.
    """
    outcome = await results.put(analysis_id, body, if_match=if_match, if_none_match=create_only)
    meta = outcome.meta
    content = orjson.dumps(
        {
            "analysis_id": analysis_id,
            "version": meta.version,
            "updated_at": meta.as_dict()["updated_at"],
        }
    )
    headers = [(b"etag", meta.etag.encode())]
    if outcome.created:
        headers.append((b"location", f"{PREFIX}{analysis_id}".encode()))
    headers += [(b"content-length", b"%d" % len(content)), _JSON]
    return 201 if outcome.created else 200, headers, content


class WritePath:
    """Pure ASGI: plain ``PUT /results/{id}`` written and answered before the framework
    runs (see the module docstring).

    Like :class:`service.api.reads.HitPath` it finds the :class:`ResultCache` and the
    settings in the lifespan state, and records each answer in the series the
    monitoring middleware would have used (``endpoint``) when given a ``monitor``.
    ``minimum_size`` is the compression layer's: an answer that long goes through it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        minimum_size: int,
        monitor: PerformanceMonitor | None = None,
        endpoint: str = "/results/{analysis_id}",
    ) -> None:
        self.app = app
        self.minimum_size = minimum_size
        self.monitor = monitor
        self.endpoint = endpoint
        self._slot: RequestSlot | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "PUT"
            or not await self._answer(scope, receive, send)
        ):
            await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> bool:
        analysis_id = id_in_path(scope)
        if analysis_id is None or not is_analysis_id(analysis_id):
            return False
        state: Mapping[str, Any] | None = scope.get("state")
        results: ResultCache | None = state.get("result_cache") if state else None
        if state is None or results is None:
            return False
        plain = _plain(scope["headers"])
        if plain is None:
            return False
        declared, if_match, create_only = plain
        settings = state["settings"]
        started = perf_counter()
        monitor = self.monitor
        if monitor is not None:
            monitor.requests_in_progress += 1
        try:
            body = await read_body(
                receive, declared, settings.max_result_bytes, settings.body_timeout
            )
            made: Answer | Exception = await write(
                results, analysis_id, body, if_match=if_match, create_only=create_only
            )
        except asyncio.CancelledError:
            # Nothing was sent yet: the write path answers its cancellation as the
            # layer around the framework would.
            await answer_cancelled(scope, receive, send, started=started, answered=False)
            raise
        except Exception as exc:
            made = exc
        finally:
            if monitor is not None:
                monitor.requests_in_progress -= 1
        if isinstance(made, Exception) or len(made[2]) >= self.minimum_size:
            scope[WRITE_MADE] = made
            return False  # the route answers it, through every layer
        status, headers, content = made
        headers += (_VARY, NO_STORE)  # what the compression and policy layers add
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        self._record(status, started)
        return True

    def _record(self, status: int, started: float) -> None:
        monitor = self.monitor
        if monitor is not None:
            slot = self._slot
            if slot is None:  # made on first use, as the monitoring middleware does
                slot = self._slot = monitor.request_slot("PUT", self.endpoint)
            slot.record(status, perf_counter() - started)


def _plain(
    headers: list[tuple[bytes, bytes]],
) -> tuple[str | None, IfMatch, bool] | None:
    """Content-Length, If-Match and If-None-Match of a PUT the route would write as they
    are; None for one it would refuse before reading the body, or one the compression
    layer treats apart. The first of each header counts, as in Starlette's ``Headers``."""
    seen: dict[bytes, str] = {}
    for name, value in headers:
        if name in _READ and name not in seen:
            seen[name] = value.decode("latin-1")
        elif name == b"range" or name == b"cache-control":
            return None
    if not declares_json(seen.get(b"content-type", "")):
        return None
    try:
        if_match = parse_if_match(seen.get(b"if-match"))
        create_only = parse_if_none_match_for_write(seen.get(b"if-none-match"))
    except Problem:
        return None
    return seen.get(b"content-length"), if_match, create_only
