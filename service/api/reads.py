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
from typing import TYPE_CHECKING, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from service.cache.ready import Headers, ReadyResult, Representation
from service.core.compression import CompressionStats
from service.core.negotiation import IDENTITY, choose_coding

if TYPE_CHECKING:
    from service.cache.results import ResultCache

PREFIX: Final = "/results/"
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
    hit: bool,
    stats: CompressionStats | None,
) -> tuple[int, Headers, bytes]:
    """Status, raw headers and body of the response to a read of ``representation``."""
    if ready.not_modified(representation, request.if_none_match, request.if_modified_since):
        return 304, representation.headers_for(True, hit), b""
    coding = representation.coding
    if coding != IDENTITY and stats is not None:
        stats.record(coding, len(ready.stored.body), len(representation.body))
        stats.count_response(coding)
    return 200, representation.headers_for(False, hit), b"" if head else representation.body


class HitPath:
    """Pure ASGI, in front of the framework: L1 hits of ``/results/{id}`` answered from
    their ready representations (see the module docstring).

    It finds the :class:`ResultCache` in the lifespan state (``scope["state"]["results"]``)
    and runs inside the monitoring middleware, so its responses are counted and timed
    in the same series as the route's.
    """

    def __init__(
        self, app: ASGIApp, *, encodings: Sequence[str], stats: CompressionStats | None = None
    ) -> None:
        self.app = app
        self.encodings = tuple(encodings)
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = False
        if scope["type"] == "http":
            sent = await self._answer(scope, send)
        if not sent:
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
        state = scope.get("state")
        results: ResultCache | None = state.get("results") if state else None
        if results is None:
            return False
        ready = results.ready(path[len(PREFIX) :])
        if ready is None:
            return False
        request = ReadRequest(scope["headers"])
        if request.odd:
            return False
        representation = ready.get(request.coding(self.encodings))
        if representation is None:
            return False  # the route makes it, once
        results.count_l1_hit()
        status, headers, body = answer(
            ready, representation, request, head=method == "HEAD", hit=True, stats=self.stats
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True
