"""CompressionMiddleware: pure ASGI, streaming, zstd / br / gzip, for any ASGI app.

What it promises, and the choices where HTTP leaves one open:

* **Negotiation** is :func:`service.core.negotiation.negotiate`: the client's q-values
  first, then the server's order (``encodings``). When the client refuses everything,
  identity included (``identity;q=0, *;q=0``), the response is sent as identity rather
  than turned into a 406: RFC 9110 section 12.5.3 allows either, and a client that gets
  bytes it may decode is better served than one that gets an error for a 200.
* **Size**: a body shorter than ``minimum_size`` (judged on Content-Length, else on the
  first chunk when it is the whole body) is sent as identity, and so is a whole body
  that does not get smaller. A body that arrives in several chunks is compressed: its
  size is unknown and streams are usually long.
* **Content types**: an allow list (JSON and ``+json``, text, JavaScript, XML and
  ``+xml`` such as SVG, NDJSON). Images, archives, fonts, audio and video never match.
* **Streaming**: each chunk is compressed and flushed as it passes, so the client can
  decode it on arrival. ``text/event-stream`` gets its headers at once. A chunk of
  ``thread_minimum_size`` bytes or more is compressed in a worker thread, so one large
  response does not stall the event loop for every other request.
* **Left alone**: a response that already has Content-Encoding (such as the service's
  pre-encoded hot reads), 1xx, 204, 206, a request with Range, ``Cache-Control:
  no-transform`` on the request or the response, and any message this layer does not
  know (``http.response.pathsend``, trailers), which passes through in order.
* **HEAD** gets the headers GET would get, Content-Length included: RFC 9110 section
  9.3.2 asks for the same header fields, and a client (or cache) that sizes a download
  with HEAD must see the size GET sends. The application renders HEAD's body as for GET
  (Starlette does), so the body is encoded as GET's would be, to measure it, and
  dropped; what a HEAD encodes is not counted in the statistics, since no byte of it is
  sent. A HEAD whose application sends no body (its Content-Length says more) or
  streams one has it removed, as GET's stream has none.
* **Headers**: ``Vary: Accept-Encoding`` is merged in (no duplicates, ``*`` respected)
  on every response of a compressible type, compressed or not, and on 304.
  Content-Length is corrected or removed, Accept-Ranges removed. A strong ETag is
  suffixed per coding (``"7"`` becomes ``"7-br"``): each representation keeps a strong
  tag of its own, and the bytes under it are the same every time (the level is fixed).
* **Conditional requests**: If-None-Match reaches the application as sent, so an
  application that makes its own representations (the service's results) compares the
  tags it really sends. When this layer encodes a response and the client's
  If-None-Match names the encoded tag (weak comparison), the client already holds
  those bytes: a GET or HEAD gets a 304 instead (a write's If-None-Match was its
  precondition, not a question about the answer's bytes). Coding suffixes are taken
  off If-Match, so a write conditional on any representation's tag reaches the
  application's own version.
* **Resources**: a stream's compressor is dropped when the response ends, fails, or the
  client goes away (the application is cancelled or raises); ``stats.streams_open``
  counts the ones alive.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import anyio.lowlevel
import anyio.to_thread
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.codings import (
    CODINGS,
    DEFAULT_LEVELS,
    StreamEncoder,
    check_level,
    compress,
    encoded_etag,
    stream_encoder,
)
from service.core.negotiation import IDENTITY, choose_coding
from service.core.validators import weak_match
from service.errors import InvalidArgument

DEFAULT_CONTENT_TYPES: Final = (
    "text/*",
    "application/json",
    "*/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/ecmascript",
    "application/x-javascript",
    "application/xml",
    "*/*+xml",
)
"""Compressed by default; ``*/*+json`` covers problem+json, ``*/*+xml`` covers SVG."""

_TAG_SUFFIX = re.compile(r"-(" + "|".join(CODINGS) + r')"')
_UNTOUCHED_STATUSES = frozenset({204, 206})


@dataclass(slots=True)
class CompressionStats:
    """Bytes before and after compression, by coding, since start.

    The middleware records what it compresses; the service's pre-encoded reads record
    through the same :meth:`record`, so the figures cover both.
    """

    bytes_in: dict[str, int] = field(default_factory=dict)
    bytes_out: dict[str, int] = field(default_factory=dict)
    responses: dict[str, int] = field(default_factory=dict)
    streams_open: int = 0

    def record(self, coding: str, before: int, after: int) -> None:
        """Count one compressed response (or one streamed chunk: ``responses`` unchanged)."""
        self.bytes_in[coding] = self.bytes_in.get(coding, 0) + before
        self.bytes_out[coding] = self.bytes_out.get(coding, 0) + after

    def count_response(self, coding: str) -> None:
        self.responses[coding] = self.responses.get(coding, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes_in": dict(self.bytes_in),
            "bytes_out": dict(self.bytes_out),
            "responses": dict(self.responses),
            "streams_open": self.streams_open,
        }


def strip_etag_codings(header: str) -> tuple[str, str | None]:
    """``header`` with the coding suffixes of :func:`encoded_etag` removed, and the
    first coding removed (None when there was none)."""
    found = _TAG_SUFFIX.search(header)
    if found is None:
        return header, None
    return _TAG_SUFFIX.sub('"', header), found.group(1)


class CompressionMiddleware:
    """Compress responses for any ASGI app; see the module docstring for the rules.

    ``encodings`` is the server's order of preference; ``levels`` overrides the default
    level of any of them (zstd 3, br 4, gzip 6). Invalid arguments raise
    :class:`~service.errors.InvalidArgument` (a ValueError).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        encodings: Iterable[str] = CODINGS,
        minimum_size: int = 500,
        levels: Mapping[str, int] | None = None,
        content_types: Iterable[str] = DEFAULT_CONTENT_TYPES,
        thread_minimum_size: int = 64 * 1024,
        stats: CompressionStats | None = None,
    ) -> None:
        self.app = app
        self.encodings = tuple(encodings)
        unknown = [coding for coding in self.encodings if coding not in CODINGS]
        if unknown or len(set(self.encodings)) != len(self.encodings):
            raise InvalidArgument(f"encodings: distinct codings of {CODINGS}, got {self.encodings}")
        self.levels = {**DEFAULT_LEVELS, **(levels or {})}
        for coding, level in self.levels.items():
            check_level(coding, level)
        if minimum_size < 0 or thread_minimum_size < 0:
            raise InvalidArgument("minimum_size and thread_minimum_size must not be negative")
        self.minimum_size = minimum_size
        self.thread_minimum_size = thread_minimum_size
        self.compressible: Callable[[bytes | None], bool] = _content_type_matcher(content_types)
        self.stats = stats if stats is not None else CompressionStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = if_none_match = None
        # A 304 answers only a read (RFC 9110 section 13.1.2): a write's If-None-Match
        # was its precondition, already met when the write was answered.
        reads = scope["method"] in ("GET", "HEAD")
        transform = True
        if_match = False
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                text = value.decode("latin-1")
                accept = text if accept is None else f"{accept}, {text}"
            elif name == b"range":
                transform = False
            elif name == b"cache-control":
                transform = transform and b"no-transform" not in value.lower()
            elif name == b"if-none-match" and reads:
                text = value.decode("latin-1")
                if_none_match = text if if_none_match is None else f"{if_none_match}, {text}"
            elif name == b"if-match":
                if_match = True
        coding = choose_coding(accept, self.encodings, transform=transform)
        if if_match:
            scope = _strip_if_match(scope)
        responder = _Responder(self, scope, coding, if_none_match, send)
        try:
            await self.app(scope, receive, responder.send)
        finally:
            responder.close()


# What a responder is doing with the response.
_WAITING, _HOLDING, _PASSING, _STREAMING, _DISCARDING = range(5)


class _Responder:
    """One response's way through the middleware (the ``send`` the app is given)."""

    __slots__ = (
        "_coding",
        "_encoder",
        "_head",
        "_if_none_match",
        "_mw",
        "_send",
        "_start",
        "_state",
    )

    def __init__(
        self,
        middleware: CompressionMiddleware,
        scope: Scope,
        coding: str,
        if_none_match: str | None,
        send: Send,
    ) -> None:
        self._mw = middleware
        self._coding = coding
        self._if_none_match = if_none_match
        self._send = send
        self._head = scope.get("method") == "HEAD"
        self._state = _WAITING
        self._start: Message | None = None
        self._encoder: StreamEncoder | None = None

    def close(self) -> None:
        """Drop the compressor, whatever state the response was left in."""
        if self._encoder is not None:
            self._encoder = None
            self._mw.stats.streams_open -= 1

    async def send(self, message: Message) -> None:
        state = self._state
        if state == _PASSING:
            await self._send(message)
        elif state == _DISCARDING:
            return  # the body of a response turned into a 304
        elif state == _STREAMING:
            await self._stream(message)
        elif state == _HOLDING:
            await self._first_body(message)
        elif message["type"] == "http.response.start":
            await self._on_start(message)
        else:
            await self._send(message)

    async def _on_start(self, message: Message) -> None:
        # One pass over the raw headers: this runs on every response, hot reads included.
        raw: list[tuple[bytes, bytes]] = message.get("headers") or []
        content_type = length = None
        leave_alone = has_vary = False
        for name, value in raw:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"vary":
                has_vary = True
            elif name == b"content-encoding" or (
                name == b"cache-control" and b"no-transform" in value.lower()
            ):
                leave_alone = True
        status: int = message["status"]
        mw = self._mw
        if leave_alone or status < 200 or status in _UNTOUCHED_STATUSES:
            await self._send(message)
            return
        if status == 304:
            headers = _with_vary(raw, has_vary)
            self._state = _PASSING
            await self._send({**message, "headers": headers.raw})
            return
        if not mw.compressible(content_type):
            self._state = _PASSING
            await self._send(message)
            return
        headers = _with_vary(raw, has_vary)
        message = {**message, "headers": headers.raw}
        too_small = length is not None and length.isdigit() and int(length) < mw.minimum_size
        if self._coding == IDENTITY or too_small:
            self._state = _PASSING
        elif content_type is not None and content_type.startswith(b"text/event-stream"):
            if self._client_holds_encoded(headers):
                self._mark_encoded(headers)
                await self._not_modified(message, headers)
                return
            if self._head:
                self._head_of_stream(headers)
            else:
                self._begin_stream(headers)
        else:
            self._start = message
            self._state = _HOLDING
            return
        await self._send(message)

    async def _first_body(self, message: Message) -> None:
        start = self._start
        assert start is not None
        self._start = None
        if message["type"] != "http.response.body":  # pathsend and the like: as they are
            self._state = _PASSING
            await self._send(start)
            await self._send(message)
            return
        headers = MutableHeaders(raw=start["headers"])
        body: bytes = message.get("body", b"")
        declared = headers.get("content-length")
        if message.get("more_body", False) or (
            self._head and declared is not None and declared != str(len(body))
        ):
            if self._client_holds_encoded(headers):
                self._mark_encoded(headers)
                await self._not_modified(start, headers)
                return
            if self._head:  # streamed, or no body to measure: unsized, as GET's stream
                self._head_of_stream(headers)
                await self._send(start)
                await self._send(message)
                return
            self._begin_stream(headers)
            await self._send(start)
            await self._stream(message)
            return
        self._state = _PASSING
        mw = self._mw
        if len(body) >= mw.minimum_size:
            coding = self._coding
            encoded = await self._compress(compress, coding, mw.levels[coding], body)
            if len(encoded) < len(body):
                self._mark_encoded(headers)
                if self._client_holds(headers):
                    await self._not_modified(start, headers)
                    return
                headers["content-length"] = str(len(encoded))
                if self._head:
                    message = {**message, "body": b""}
                else:
                    mw.stats.record(coding, len(body), len(encoded))
                    mw.stats.count_response(coding)
                    message = {**message, "body": encoded}
        await self._send(start)
        await self._send(message)

    def _head_of_stream(self, headers: MutableHeaders) -> None:
        """HEAD of what GET would stream: its headers (encoded, unsized), and whatever
        body the application sends passed on for the server to drop, not encoded."""
        self._mark_encoded(headers)
        if "content-length" in headers:
            del headers["content-length"]
        self._state = _PASSING

    def _begin_stream(self, headers: MutableHeaders) -> None:
        self._mark_encoded(headers)
        if "content-length" in headers:
            del headers["content-length"]
        self._encoder = stream_encoder(self._coding, self._mw.levels[self._coding])
        self._mw.stats.streams_open += 1
        self._mw.stats.count_response(self._coding)
        self._state = _STREAMING

    async def _stream(self, message: Message) -> None:
        encoder = self._encoder
        if message["type"] != "http.response.body" or encoder is None:
            await self._send(message)  # trailers after the last chunk, say
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if more and not body:
            return  # nothing to flush; an empty chunk would be an empty write anyway
        encoded = await self._compress(encoder.chunk if more else encoder.finish, body)
        self._mw.stats.record(self._coding, len(body), len(encoded))
        if not more:
            self.close()
        await self._send({"type": "http.response.body", "body": encoded, "more_body": more})

    async def _compress(self, function: Callable[..., bytes], *args: object) -> bytes:
        data = args[-1]
        assert isinstance(data, bytes)
        if len(data) < self._mw.thread_minimum_size:
            return function(*args)
        return await anyio.to_thread.run_sync(function, *args, limiter=_thread_limiter())

    def _client_holds_encoded(self, headers: MutableHeaders) -> bool:
        """Whether If-None-Match names the tag this response gets once encoded."""
        etag = headers.get("etag")
        return (
            self._if_none_match is not None
            and etag is not None
            and weak_match(self._if_none_match, encoded_etag(etag, self._coding))
        )

    def _client_holds(self, headers: MutableHeaders) -> bool:
        """Whether If-None-Match names the (already encoded) tag in ``headers``."""
        etag = headers.get("etag")
        return (
            self._if_none_match is not None
            and etag is not None
            and weak_match(self._if_none_match, etag)
        )

    async def _not_modified(self, start: Message, headers: MutableHeaders) -> None:
        """Answer 304 instead: the client holds the encoded bytes under this tag already.

        Only reached for a strong tag of this layer's own making, so the application
        could not have known: it compared the tag of its identity bytes. ``headers``
        are already marked encoded."""
        for name in ("content-length", "content-encoding", "content-type"):
            if name in headers:
                del headers[name]
        self._state = _DISCARDING
        await self._send({**start, "status": 304, "headers": headers.raw})
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def _mark_encoded(self, headers: MutableHeaders) -> None:
        headers["content-encoding"] = self._coding
        if "accept-ranges" in headers:
            del headers["accept-ranges"]
        etag = headers.get("etag")
        if etag is not None:
            headers["etag"] = encoded_etag(etag, self._coding)


def _with_vary(raw: list[tuple[bytes, bytes]], has_vary: bool) -> MutableHeaders:
    """A copy of ``raw`` whose Vary includes Accept-Encoding once (``*`` already covers it)."""
    headers = MutableHeaders(raw=list(raw))
    if not has_vary:
        headers.append("vary", "Accept-Encoding")
        return headers
    values = headers.getlist("vary")
    tokens = [token.strip() for value in values for token in value.split(",") if token.strip()]
    lowered = [token.lower() for token in tokens]
    if "*" in lowered:
        return headers
    if "accept-encoding" not in lowered:
        tokens.append("Accept-Encoding")
    elif len(values) == 1:
        return headers
    unique = list({token.lower(): token for token in reversed(tokens)}.values())[::-1]
    del headers["vary"]
    headers["vary"] = ", ".join(unique)
    return headers


def _strip_if_match(scope: Scope) -> Scope:
    """``scope`` with the coding suffixes of :func:`encoded_etag` taken off If-Match: a
    write conditional on any representation's tag is conditional on that version."""
    rewritten: list[tuple[bytes, bytes]] = []
    for name, value in scope["headers"]:
        if name == b"if-match":
            text, found = strip_etag_codings(value.decode("latin-1"))
            if found is not None:
                value = text.encode("latin-1")
        rewritten.append((name, value))
    return {**scope, "headers": rewritten}


def _content_type_matcher(patterns: Iterable[str]) -> Callable[[bytes | None], bool]:
    """A memoized test of a Content-Type against ``type/sub``, ``type/*`` and ``*/*+suffix``."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern.startswith("*/*+"):
            suffixes.append(pattern[3:])
        elif pattern.endswith("/*"):
            prefixes.append(pattern[:-1])
        elif "/" in pattern and "*" not in pattern:
            exact.add(pattern)
        else:
            raise InvalidArgument(
                f"content type pattern {pattern!r}: use type/sub, type/* or */*+sfx"
            )
    prefix_tuple, suffix_tuple = tuple(prefixes), tuple(suffixes)

    @functools.lru_cache(maxsize=256)
    def compressible(content_type: bytes | None) -> bool:
        if not content_type:
            return False
        media = content_type.decode("latin-1").partition(";")[0].strip().lower()
        return media in exact or media.startswith(prefix_tuple) or media.endswith(suffix_tuple)

    return compressible


_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("_limiter")


def _thread_limiter() -> anyio.CapacityLimiter:
    """At most one compression in a worker thread per core, per event loop."""
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(os.cpu_count() or 1)
        _limiter.set(limiter)
        return limiter
