"""Reads of one result, answered from its ready representations.

The hit path (:class:`HitPath`, a pure-ASGI layer in front of the framework) and the
results route share everything here: how a request's headers are read, which
representation it gets, and what the answer is. So the hit path can only ever send
what the route would have sent; a differential test holds them to it.

The hit path answers ``GET``/``HEAD /results/{id}`` with a 200 or a 304: at once when
the id's current version is in L1 with its representation for the negotiated coding
made, else after reading it through the cache as the route does (a miss costs its
database read, not the framework around it). Anything else goes on, unchanged, to the
full stack: an invalid id, ``Range``, ``If-Range``, ``If-Match``,
``If-Unmodified-Since``, ``Cache-Control: no-transform``, a repeated conditional
header, a mounted app whose path does not fit. A read it made that ends in a 404 or an
error goes on too, with the read attached (:data:`READ_MADE`), so the route answers
it without reading again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from time import perf_counter, time
from typing import TYPE_CHECKING, Any, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.caching import ReadHeaders
from service.api.responses import answer_cancelled
from service.cache.ready import Headers, ReadyResult, Representation
from service.core.compression import CompressionStats
from service.core.negotiation import IDENTITY, choose_coding
from service.model import StoredResult, is_analysis_id

if TYPE_CHECKING:
    from service.cache.result_cache import CachedRead, ResultCache
    from service.monitoring.performance import PerformanceMonitor, RequestSlot

PREFIX: Final = "/results/"
_PREFIX_LENGTH: Final = len(PREFIX)
_MAX_REMEMBERED: Final = 1024
"""Distinct Accept-Encoding values whose coding is remembered (a client can send any)."""
_ODD: Final = frozenset({b"range", b"if-range", b"if-match", b"if-unmodified-since"})
READ_MADE: Final = "service.read_made"
"""Scope key under which the hit path hands the route a read it made but does not
answer (the :class:`CachedRead` of a 404, or the exception the read raised)."""


class ReadRequest:
    """What a read's answer depends on, from one pass over the request headers."""

    __slots__ = ("accept", "if_modified_since", "if_none_match", "odd", "transform")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        accept = if_none_match = if_modified_since = None
        transform = True
        odd = False
        for name, value in headers:
            if name == b"accept-encoding":
                text = value.decode("latin-1")
                accept = text if accept is None else f"{accept}, {text}"
            elif name == b"if-none-match":
                text = value.decode("latin-1")
                odd = odd or if_none_match is not None
                if_none_match = text if if_none_match is None else f"{if_none_match}, {text}"
            elif name == b"if-modified-since":
                odd = odd or if_modified_since is not None
                if if_modified_since is None:
                    if_modified_since = value.decode("latin-1")
            elif name in _ODD:
                odd = True
                transform = transform and name != b"range"
            elif name == b"cache-control" and b"no-transform" in value.lower():
                odd = True
                transform = False
        self.accept = accept
        self.if_none_match = if_none_match
        self.if_modified_since = if_modified_since
        self.transform = transform
        self.odd = odd
        """Something the hit path leaves to the full stack."""

    def coding(self, encodings: Sequence[str]) -> str:
        return choose_coding(self.accept, encodings, transform=self.transform)


def answer(
    ready: ReadyResult,
    representation: Representation,
    request: ReadRequest,
    *,
    head: bool,
    tail: Headers,
    stats: CompressionStats | None,
) -> tuple[int, Headers, bytes]:
    """Status, raw headers and body of the response to a read of ``representation``;
    the headers end with ``tail`` (what the policy and the answering tier add).

    The headers are always a new list: middleware may edit a response's headers in
    place (Starlette's GZipMiddleware does), and must never edit the blocks that every
    later response shares.
    """
    not_modified, settled = _outcome(ready, representation, request, stats)
    headers = [*representation.block(not_modified, settled), *tail]
    if not_modified:
        return 304, headers, b""
    return 200, headers, b"" if head else representation.body


def _outcome(
    ready: ReadyResult,
    representation: Representation,
    request: ReadRequest,
    stats: CompressionStats | None,
) -> tuple[bool, bool]:
    """Whether a read of ``representation`` is answered 304, and whether its version is
    settled (sent with Last-Modified); a 200 in a coding is counted in ``stats``."""
    settled = ready.settled(time())
    if ready.not_modified(
        representation, request.if_none_match, request.if_modified_since, settled
    ):
        return True, settled
    coding = representation.coding
    if coding != IDENTITY and stats is not None:
        stats.record(coding, len(ready.stored.body), len(representation.body))
        stats.count_response(coding)
    return False, settled


def id_in_path(scope: Scope) -> str | None:
    """What follows ``/results/`` in the request's path (under its root path), or None
    for another path. Not validated: the caller checks the id when it needs to."""
    path: str = scope["path"]
    root = scope.get("root_path")
    if root:
        if not path.startswith(root + PREFIX):
            return None
        return path[len(root) + _PREFIX_LENGTH :]
    return path[_PREFIX_LENGTH:] if path.startswith(PREFIX) else None


class HitPath:
    """Pure ASGI, in front of everything: reads of ``/results/{id}`` answered from their
    ready representations (see the module docstring).

    It finds the :class:`ResultCache` in the lifespan state (``scope["state"]["result_cache"]``).
    With a ``monitor`` it records each answer in the series the monitoring middleware
    would have used (``endpoint``), so a read is timed and counted as the route's reads
    are; it sits outside that middleware so a hit does not also pay for its wrapping.
    ``levels`` and ``minimum_size`` are the compression settings the route makes a
    representation with.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        encodings: Sequence[str],
        read_headers: ReadHeaders,
        levels: Mapping[str, int] | None = None,
        minimum_size: int = 0,
        stats: CompressionStats | None = None,
        monitor: PerformanceMonitor | None = None,
        endpoint: str = "/results/{analysis_id}",
    ) -> None:
        self.app = app
        self.encodings = tuple(encodings)
        self.tails = read_headers.tails
        self.tail = read_headers.tails["l1"]
        self.levels = dict(levels or {})
        self.minimum_size = minimum_size
        self.stats = stats
        self.monitor = monitor
        self.endpoint = endpoint
        self._slots: dict[str, RequestSlot] = {}
        self._codings: dict[str | None, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not await self._answer(scope, receive, send):
            await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> bool:
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return False
        analysis_id = id_in_path(scope)
        if analysis_id is None:
            return False
        started = perf_counter()
        state = scope.get("state")
        results: ResultCache | None = state.get("result_cache") if state else None
        if results is None:
            return False
        request = ReadRequest(scope["headers"])
        if request.odd:
            return False
        coding, ready, representation = self._lookup(results, request, analysis_id)
        monitor = self.monitor
        if monitor is not None:
            monitor.requests_in_progress += 1
        try:
            if ready is not None and representation is not None:
                results.count_l1_hit()
                tail = self.tail
            else:
                if not is_analysis_id(analysis_id):
                    return False  # the route's 422
                read = await self._read(scope, results, analysis_id)
                if read is None:
                    return False  # the route answers the error
                stored = read.found
                if not isinstance(stored, StoredResult):
                    scope[READ_MADE] = read
                    return False  # the route's 404
                ready = read.ready or ReadyResult(stored)
                level = self.levels.get(coding, 0)
                representation = await ready.make(coding, level, self.minimum_size)
                tail = self.tails[read.source]
            status, headers, body = answer(
                ready, representation, request, head=method == "HEAD", tail=tail, stats=self.stats
            )
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except asyncio.CancelledError:
            # Only a read waits on anything: nothing was sent when it is cancelled.
            await answer_cancelled(scope, receive, send, started=started, answered=False)
            raise
        finally:
            if monitor is not None:
                monitor.requests_in_progress -= 1
        self._record(method, status, started)
        return True

    def answer_now(
        self,
        state: Mapping[str, Any],
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[int, bytes, bytes] | None:
        """The answer to a read whose representation L1 holds ready, with no ASGI at all;
        None for anything else. For the HTTP server (:mod:`service.server`), which then
        writes the answer itself and skips the request's task, scope and messages: its
        status, its header lines after the server's own (ready made, see
        :meth:`Representation.lines`) and its body.

        ``state`` is the lifespan state, ``path`` the request's path as received (not
        unescaped: the server passes on any path with an escape in it).
        """
        started = perf_counter()
        if (method != "GET" and method != "HEAD") or not path.startswith(PREFIX):
            return None
        results: ResultCache | None = state.get("result_cache")
        if results is None:
            return None
        request = ReadRequest(headers)
        if request.odd:
            return None
        _, ready, representation = self._lookup(results, request, path[_PREFIX_LENGTH:])
        if ready is None or representation is None:
            return None
        results.count_l1_hit()
        not_modified, settled = _outcome(ready, representation, request, self.stats)
        lines = representation.lines(not_modified, settled, self.tail)
        if not_modified:
            status, body = 304, b""
        else:
            status, body = 200, b"" if method == "HEAD" else representation.body
        self._record(method, status, started)
        return status, lines, body

    def _lookup(
        self, results: ResultCache, request: ReadRequest, analysis_id: str
    ) -> tuple[str, ReadyResult | None, Representation | None]:
        """The coding the request gets, and the id's ready result and representation
        in it (each None when L1 does not hold them)."""
        coding = self._coding(request.accept)
        ready = results.ready(analysis_id)
        return coding, ready, None if ready is None else ready.get(coding)

    def _record(self, method: str, status: int, started: float) -> None:
        monitor = self.monitor
        if monitor is not None:
            slot = self._slots.get(method)
            if slot is None:  # made on first use, as the monitoring middleware does
                slot = self._slots[method] = monitor.request_slot(method, self.endpoint)
            slot.record(status, perf_counter() - started)

    @staticmethod
    async def _read(scope: Scope, results: ResultCache, analysis_id: str) -> CachedRead | None:
        """The read the route would make; None, with its error left for the route under
        :data:`READ_MADE` (which maps and logs it, once), when it failed."""
        try:
            return await results.get(analysis_id)
        except Exception as exc:
            scope[READ_MADE] = exc
            return None

    def _coding(self, accept: str | None) -> str:
        """The coding for this Accept-Encoding value, remembered per distinct value."""
        coding = self._codings.get(accept)
        if coding is None:
            coding = choose_coding(accept, self.encodings)
            if len(self._codings) >= _MAX_REMEMBERED:
                self._codings.clear()
            self._codings[accept] = coding
        return coding
