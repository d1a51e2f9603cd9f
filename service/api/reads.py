"""Reads of one result, answered from its ready representations.

The hit path (:class:`HitPath`, a pure-ASGI layer in front of the framework) and the
results route share everything here: how a request's headers are read, which
representation it gets, and what the answer is. So the hit path can only ever send
what the route would have sent; a differential test holds them to it.

The hit path answers ``GET``/``HEAD /results/{id}`` when the id's current version is
in L1 and its representation for the negotiated coding is made. Anything else goes on,
unchanged, to the full stack: a miss, a representation not made yet, ``Range``,
``If-Range``, ``If-Match``, ``If-Unmodified-Since``, ``Cache-Control: no-transform``, a
repeated conditional header, a mounted app whose path does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter, time
from typing import TYPE_CHECKING, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.caching import ReadHeaders
from service.cache.ready import Headers, ReadyResult, Representation
from service.core.compression import CompressionStats
from service.core.negotiation import IDENTITY, choose_coding

if TYPE_CHECKING:
    from service.cache.result_cache import ResultCache
    from service.monitoring.performance import PerformanceMonitor, RequestSlot

PREFIX: Final = "/results/"
_PREFIX_LENGTH: Final = len(PREFIX)
_MAX_REMEMBERED: Final = 1024
"""Distinct Accept-Encoding values whose coding is remembered (a client can send any)."""
_ODD: Final = frozenset({b"range", b"if-range", b"if-match", b"if-unmodified-since"})


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
    settled = ready.settled(time())
    if ready.not_modified(
        representation, request.if_none_match, request.if_modified_since, settled
    ):
        return 304, [*representation.block(True, settled), *tail], b""
    coding = representation.coding
    if coding != IDENTITY and stats is not None:
        stats.record(coding, len(ready.stored.body), len(representation.body))
        stats.count_response(coding)
    headers = [*representation.block(False, settled), *tail]
    return 200, headers, b"" if head else representation.body


class HitPath:
    """Pure ASGI, in front of everything: L1 hits of ``/results/{id}`` answered from
    their ready representations (see the module docstring).

    It finds the :class:`ResultCache` in the lifespan state (``scope["state"]["result_cache"]``).
    With a ``monitor`` it records each answer in the series the monitoring middleware
    would have used (``endpoint``), so a hit is timed and counted as the route's reads
    are; it sits outside that middleware so a hit does not also pay for its wrapping.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        encodings: Sequence[str],
        read_headers: ReadHeaders,
        stats: CompressionStats | None = None,
        monitor: PerformanceMonitor | None = None,
        endpoint: str = "/results/{analysis_id}",
    ) -> None:
        self.app = app
        self.encodings = tuple(encodings)
        self.tail = read_headers.tails["l1"]
        self.stats = stats
        self.monitor = monitor
        self.endpoint = endpoint
        self._slots: dict[str, RequestSlot] = {}
        self._codings: dict[str | None, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not await self._answer(scope, send):
            await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send) -> bool:
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return False
        path: str = scope["path"]
        root = scope.get("root_path")
        if root:
            if not path.startswith(root + PREFIX):
                return False
            path = path[len(root) :]
        elif not path.startswith(PREFIX):
            return False
        started = perf_counter()
        state = scope.get("state")
        results: ResultCache | None = state.get("result_cache") if state else None
        if results is None:
            return False
        ready = results.ready(path[_PREFIX_LENGTH:])
        if ready is None:
            return False
        request = ReadRequest(scope["headers"])
        if request.odd:
            return False
        representation = ready.get(self._coding(request.accept))
        if representation is None:
            return False  # the route makes it, once
        results.count_l1_hit()
        status, headers, body = answer(
            ready, representation, request, head=method == "HEAD", tail=self.tail, stats=self.stats
        )
        monitor = self.monitor
        if monitor is None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return True
        monitor.requests_in_progress += 1
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            monitor.requests_in_progress -= 1
            slot = self._slots.get(method)
            if slot is None:  # made on first use, as the monitoring middleware does
                slot = self._slots[method] = monitor.request_slot(method, self.endpoint)
            slot.record(status, perf_counter() - started)
        return True

    def _coding(self, accept: str | None) -> str:
        """The coding for this Accept-Encoding value, remembered per distinct value."""
        coding = self._codings.get(accept)
        if coding is None:
            coding = choose_coding(accept, self.encodings)
            if len(self._codings) >= _MAX_REMEMBERED:
                self._codings.clear()
            self._codings[accept] = coding
        return coding
