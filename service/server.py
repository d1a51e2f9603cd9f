"""The HTTP server's own limits: how big and how slow a request head may be.

uvicorn's httptools protocol buffers a request head without bound (a 64 MiB header
was accepted, and parsing it blocked the event loop) and waits for it without a
deadline (a client sending one byte a second held its connection forever, and a
thousand such clients held a thousand). :class:`GuardedHttpToolsProtocol` adds:

* MAX_HEADER_BYTES: the request line and headers together; more is answered 431.
  At most that plus one read from the socket is ever buffered.
* MAX_HEADERS: how many header fields; more is 431.
* HEADER_TIMEOUT: seconds from a connection's start (or a request's first byte) to
  the end of its head; then 408 and the connection is closed.
* SEND_TIMEOUT: seconds a response may wait on a client that stopped reading (the
  socket's buffer full); then the connection is dropped, and with it the response's
  bytes, so clients that never read cannot pile up memory.

Refusals (these, and what the HTTP parser itself rejects: 400, or 413 for a
Content-Length past 64 bits) are problem+json with ``Connection: close``, logged as one
WARNING line at most every five seconds per kind (a client misbehaving is not the
service failing). The body has its own deadline, BODY_TIMEOUT, enforced where it is
read (``service.api.body``). And a lost connection is told to every request on it, the
one being answered included (uvicorn tells only the newest parsed, so a pipelining
client that went away made the answered one write to a closed transport: an ERROR).

When the server accepts a connection, it also accepts those waiting behind it
(:mod:`service.accepting`): libuv accepts one per turn of its loop, and a busy loop
takes long turns.

``service serve`` uses this protocol; :func:`configure` sets its limits (each worker's
app factory calls it with the settings it read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import struct
import time
from dataclasses import dataclass, fields
from email.utils import formatdate
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
)

from service.accepting import accept_waiting
from service.api.reads import PREFIX, HitPath
from service.cache.ready import header_lines
from service.config import Settings
from service.logs import RateLimitedLog

logger = logging.getLogger("service.server")
_refusals = RateLimitedLog(logger, interval=5.0)

LINGER = 2.0
"""Seconds a refused connection is kept half-closed, dropping what the client sends."""


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """What a request head may cost; the defaults are the settings' defaults."""

    max_bytes: int = _DEFAULTS["max_header_bytes"]
    max_fields: int = _DEFAULTS["max_headers"]
    timeout: float = _DEFAULTS["header_timeout"]
    send_timeout: float = _DEFAULTS["send_timeout"]


def configure(settings: Settings) -> None:
    """Use ``settings``' MAX_HEADER_BYTES, MAX_HEADERS, HEADER_TIMEOUT and SEND_TIMEOUT."""
    GuardedHttpToolsProtocol.limits = HeadLimits(
        settings.max_header_bytes,
        settings.max_headers,
        settings.header_timeout,
        settings.send_timeout,
    )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; carries the answer."""

    def __init__(self, status: int, slug: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail


def _too_large(detail: str) -> _Refused:
    return _Refused(431, "header-too-large", "Request header fields too large", detail)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded, timed request head."""

    limits: ClassVar[HeadLimits] = HeadLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._received = 0
        """Bytes received while a head was awaited (bounds what the parser buffers)."""
        self._awaiting_head = True
        """A head has begun (or the connection is new) and has not ended: it is timed."""
        self._head_deadline = 0.0
        self._spared = False
        """Whether the current wait was extended once for bytes not read yet."""
        self._head_timer: asyncio.TimerHandle | None = None
        """At most one per connection, left armed from request to request (arming and
        cancelling one per request cost more than the rest of the limits together):
        when it fires it checks the current head's deadline and arms itself again."""
        self._default_headers: tuple[list[tuple[bytes, bytes]], _DateAtAnswer] | None = None
        self._lingering: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._running: Any = None
        """The request cycle being answered (uvicorn remembers only the newest parsed)."""
        self._hits: HitPath | None = None
        self._answered = False
        """The message being parsed was answered from L1 (there is no cycle for it; it
        has no body either, or it would not have been)."""
        self._unsent: list[bytes] = []
        """Answers given from L1 during this pass of the event loop, not yet written."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._hits = _hit_path_of(self.app) if not self.access_log else None
        self._wait(self.limits.timeout)
        accept_waiting(self.loop, transport, self._another, self.config.ssl)

    def _another(self) -> GuardedHttpToolsProtocol:
        """The protocol of another connection to the same server, made as uvicorn
        makes one."""
        return type(self)(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._unsent.clear()
        for timer in (self._lingering, self._send_timer):
            if timer is not None:
                timer.cancel()
        # uvicorn marks only the newest parsed request as disconnected; with pipelined
        # requests the one being answered then wrote to the closed transport, an ERROR
        # with a traceback for every client that pipelined and went away.
        for cycle in (self._running, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        cycle.default_headers = self._date_at_answer(cycle.default_headers)
        super()._start_asgi_task(cycle, app)

    def _date_at_answer(self, headers: list[tuple[bytes, bytes]]) -> _DateAtAnswer:
        """``headers`` (uvicorn's, renewed once a second) as :class:`_DateAtAnswer`,
        made once per list."""
        known = self._default_headers
        if known is None or known[0] is not headers:
            known = self._default_headers = (headers, _DateAtAnswer(headers))
        return known[1]

    def on_response_complete(self) -> None:
        # uvicorn's, except for the wait for the next request: uvicorn arms a timer for
        # it after every response and cancels it when the next request begins; here the
        # connection's one timer times that wait too (see _head_too_slow).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._in_head = True  # what arrives next is the next request's head
        self._received = 0
        self._wait(self.timeout_keep_alive)

    def shutdown(self) -> None:
        self._send_unsent()
        super().shutdown()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_stalled(self) -> None:
        self._send_timer = None
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        _refusals.warning(
            "send-timeout",
            "%s dropped: it read nothing for %g s (SEND_TIMEOUT)",
            client,
            self.limits.send_timeout,
        )
        _reset(self.transport)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, with one more outcome: a refusal raised by a callback below.
        if self._lingering is not None:
            return  # refused: what the client still sends is dropped unread
        if self._in_head:
            self._received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__)
                return
            raise
        except httptools.HttpParserError as exc:
            # uvicorn logs every one (a flood of WARNING lines) and answers plain text.
            if "content-length" in str(exc).lower():
                self._refuse(
                    _Refused(
                        413,
                        "payload-too-large",
                        "Result too large",
                        "Content-Length is not a number this server accepts",
                    )
                )
            else:
                self._refuse(
                    _Refused(400, "bad-request", "Bad request", "not a valid HTTP/1.1 request")
                )
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._send_unsent()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._received > self.limits.max_bytes:
            # An unfinished head already past the limit: stop buffering it.
            self._refuse(_too_large(self._size_detail()))

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._answered = False
        self._in_head = True
        self._wait(self.limits.timeout)

    def on_headers_complete(self) -> None:
        self._in_head = self._awaiting_head = False
        self._received = 0
        # Counted once the head is whole: until then data_received bounds what is
        # buffered, so a head past the limits costs at most one read more.
        headers = self.headers
        limits = self.limits
        if len(headers) > limits.max_fields:
            raise _too_large(f"more than {limits.max_fields} header fields (MAX_HEADERS)")
        size = len(self.url) + 4 * len(headers)  # ": " and CRLF
        for name, value in headers:
            size += len(name) + len(value)
        if size > limits.max_bytes:
            raise _too_large(self._size_detail())
        hits = self._hits
        if hits is not None and self.url.startswith(_RESULTS) and self._answer_at_once(hits):
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if not self._answered:
            super().on_message_complete()

    def _answer_at_once(self, hits: HitPath) -> bool:
        """Answer an L1 hit here, with what the hit path would have sent, and no task,
        scope or ASGI message made for it; False to leave the request to the app.

        Only a plain keep-alive HTTP/1.1 ``GET``/``HEAD`` with no body, nothing before it
        still being answered, and a client reading what it is sent: anything else takes
        the usual way, where uvicorn and the app handle it. The caller has checked that
        the target starts with ``/results/``.
        """
        cycle = self.cycle
        if (
            (cycle is not None and not cycle.response_complete)
            or self.pipeline
            or self.flow.write_paused
            or len(self._unsent) >= _MOST_UNSENT
            or self.root_path
            or self.limit_concurrency is not None
        ):
            return False
        parser = self.parser
        method = parser.get_method()
        if method != b"GET" and method != b"HEAD":
            return False
        if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            return False
        headers = self.headers
        for name, _ in headers:
            if name in _NOT_AT_ONCE:
                return False
        path = httptools.parse_url(self.url).path
        if b"%" in path or not path.isascii():
            return False
        found = hits.answer_now(self.app_state, method.decode(), path.decode(), headers)
        if found is None:
            return False
        status, lines, body = found
        if not self._unsent:
            self.loop.call_soon(self._send_unsent)
        self._unsent += (_server_lines(status, self.server_state.default_headers), lines, body)
        self._answered = True
        self.on_response_complete()
        return True

    def _send_unsent(self) -> None:
        """Write the answers given from L1 since the last call, in one write.

        An answer is written once the event loop has called back every connection with
        data to read, rather than from that callback: writing between the reads cost a
        hit more CPU (in the kernel and in Python) than the whole of its Python, under
        many connections. Responses written by ASGI tasks are batched so by the loop
        itself. Anything else this protocol writes to the transport calls this first,
        so answers keep their order.
        """
        unsent = self._unsent
        if unsent:
            self._unsent = []
            if not self.transport.is_closing():
                self.transport.writelines(unsent)

    # Internals

    def _size_detail(self) -> str:
        return (
            f"the request line and headers exceed {self.limits.max_bytes} bytes (MAX_HEADER_BYTES)"
        )

    def _wait(self, seconds: float) -> None:
        """Drop the connection unless a head (begun, or not yet) ends within ``seconds``."""
        self._awaiting_head = True
        self._spared = False
        now = self.loop.time()
        self._head_deadline = now + seconds
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(now + self._tick(), self._head_too_slow)

    def _tick(self) -> float:
        """How long the connection's timer sleeps at most: no wait is shorter, so a
        deadline set after the timer was armed is never missed (by more than a
        hundredth of a second, should a wait be set shorter than that)."""
        return max(0.01, min(self.limits.timeout, self.timeout_keep_alive))

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport.is_closing():
            return  # the next wait arms it again
        now = self.loop.time()
        if now < self._head_deadline:  # a later wait than the one it was armed for
            wake = min(self._head_deadline, now + self._tick())
            self._head_timer = self.loop.call_at(wake, self._head_too_slow)
            return
        if self._received == 0 and (self.cycle is None or self.cycle.response_complete):
            # No request has begun since the last answer: no one is waiting for one,
            # unless it already sits unread in the socket. uvloop runs due timers
            # before it reads: a loop that was busy when the wait ended would reset a
            # request the client sent in time. It is read next, so wait one tick more.
            if not self._spared and _unread(self.transport):
                self._spared = True
                self._head_timer = self.loop.call_at(now + self._tick(), self._head_too_slow)
                return
            self.transport.close()
            return
        self._refuse(
            _Refused(
                408,
                "request-timeout",
                "Request timeout",
                f"the request head did not arrive within {self.limits.timeout:g} s"
                " (HEADER_TIMEOUT)",
            )
        )

    def _refuse(self, refusal: _Refused) -> None:
        """Answer ``refusal`` (unless a response is under way) and close the connection.

        Closed the way nginx does it ("lingering close"): the answer, then our half of
        the connection, then whatever the client still sends is read and dropped for up
        to LINGER seconds. Closing at once with unread data would reset the connection,
        and a reset can destroy the answer before the client reads it.
        """
        self._in_head = self._awaiting_head = False
        self._disarm_head_timer()
        self._send_unsent()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        _refusals.warning(
            refusal.slug, "%s refused with %d: %s", client, refusal.status, refusal.detail
        )
        transport = self.transport
        if transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            transport.close()  # a response is being sent: it cannot be followed by ours
            return
        body = orjson.dumps(
            {
                "type": f"/problems/{refusal.slug}",
                "title": refusal.title,
                "status": refusal.status,
                "detail": refusal.detail,
            }
        )
        transport.write(
            b"HTTP/1.1 %d %s\r\n" % (refusal.status, refusal.title.encode())
            + b"content-type: application/problem+json\r\n"
            + b"content-length: %d\r\n" % len(body)
            + b"cache-control: no-store\r\n"
            + b"connection: close\r\n\r\n"
            + body
        )
        if transport.can_write_eof():
            transport.write_eof()
            self._lingering = self.loop.call_later(LINGER, _reset, transport)
        else:
            transport.close()


class _DateAtAnswer(list[tuple[bytes, bytes]]):
    """uvicorn's default headers for a request, whose ``Date`` is the second its answer
    starts in.

    uvicorn formats ``Date`` once a second in its main loop and gives a request the
    value current when the request arrived, so an answer could carry a Date up to a
    second or more before the moment it was made, and a Last-Modified written in
    between was later than its own Date (RFC 9110 section 8.8.2.1 forbids that).
    uvicorn's cycle adds the response's headers to these when the answer starts: that
    addition takes the Date then.
    """

    def __add__(self, other: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        return [*_dated(self), *other]


_date: tuple[int, bytes] = (0, b"")
_starts: tuple[int, list[tuple[bytes, bytes]], dict[int, bytes]] = (0, [], {})


def _server_lines(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The status line and the server's own header lines (``headers``, uvicorn's
    defaults, with the Date of this second), made once a second per status."""
    global _starts
    now = int(time.time())
    second, known, made = _starts
    if second != now or known is not headers:
        made = {}
        _starts = (now, headers, made)
    lines = made.get(status)
    if lines is None:
        lines = made[status] = STATUS_LINE[status] + header_lines(_dated(headers))
    return lines


def _dated(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with their ``date`` (uvicorn puts it first, unless turned off) now."""
    global _date
    if not headers or headers[0][0] != b"date":
        return headers
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    if headers[0][1] == _date[1]:
        return headers
    return [(b"date", _date[1]), *headers[1:]]


_RESULTS = PREFIX.encode()
_MOST_UNSENT = 3 * 16
"""Parts of the answers given at once that a connection may have waiting to be
written: sixteen answers. A client pipelining more in one read has the rest answered
the usual way, under uvicorn's flow control, rather than held here."""
_NOT_AT_ONCE = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
"""Request headers that take a request the usual way: a body to read, or an upgrade."""


def _hit_path_of(app: Any) -> HitPath | None:
    """The hit path of the app this server runs (see ``ServiceApp.hit_path``), under
    uvicorn's proxy-headers layer, which changes nothing a hit's answer depends on."""
    while isinstance(app, ProxyHeadersMiddleware):
        app = app.app
    hits = getattr(app, "hit_path", None)
    return hits if isinstance(hits, HitPath) else None


def _reset(transport: asyncio.Transport) -> None:
    """Drop a connection and whatever it still has to send, in the process and in the
    kernel: close() would wait for a client that reads nothing, and a plain abort
    leaves the unsent bytes queued in the kernel until its retries give up."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unread(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes (or the client's close) wait unread in the connection's socket: a
    poll that does not wait (any descriptor number, unlike select)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False
