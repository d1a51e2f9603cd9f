"""CompressionMiddleware, through small ASGI apps: every rule of its module docstring.

Most tests call the middleware directly with a hand-made scope and collect what it
sends, so the bytes on the wire and each ASGI message can be checked exactly; the
bodies are decoded here with zstandard, brotli and zlib, never by an HTTP client.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import brotli
import httpx
import pytest
import uvicorn
import zstandard
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.codings import CODINGS, compress, encoded_etag
from service.core.compression import (
    DEFAULT_CONTENT_TYPES,
    CompressionMiddleware,
    CompressionStats,
    strip_etag_codings,
)

MIN = 500
"""The middleware's default ``minimum_size``."""
ALL = "zstd, br, gzip"
"""An Accept-Encoding that accepts every coding (the server's order then decides)."""
VARY = ("vary", "Accept-Encoding")
Headers = list[tuple[str, str]]


# Helpers: bodies, decoders, apps, and a raw ASGI call.


def json_body(size: int) -> bytes:
    """A compressible JSON document of exactly ``size`` bytes (at least 10)."""
    return b'{"pad":"' + b"a" * (size - 10) + b'"}'


def document(items: int) -> bytes:
    """A realistic, compressible JSON document."""
    rows = [
        {"id": i, "name": f"sample {i}", "score": i * 0.25, "ok": i % 3 == 0} for i in range(items)
    ]
    return json.dumps({"items": rows}).encode()


def decode(coding: str, data: bytes) -> bytes:
    """``data`` decoded from ``coding`` as one complete stream."""
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "gzip":
        return zlib.decompress(data, 31)
    raise AssertionError(f"unknown coding {coding}")


class StreamDecoder:
    """Incremental decoding: ``feed`` returns what the bytes so far make decodable."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._zstd = zstandard.ZstdDecompressor().decompressobj()
        self._brotli = brotli.Decompressor()
        self._gzip = zlib.decompressobj(31)

    def feed(self, data: bytes) -> bytes:
        if self.coding == "zstd":
            return self._zstd.decompress(data)
        if self.coding == "br":
            # brotli 1.2's process() hands out at most about 32 KB per call even when the
            # input holds more; empty calls drain the rest (no further input is needed).
            out = bytes(self._brotli.process(data))
            while not self._brotli.is_finished() and (more := bytes(self._brotli.process(b""))):
                out += more
            return out
        return self._gzip.decompress(data)

    @property
    def finished(self) -> bool:
        """True once the stream's end marker has been decoded."""
        if self.coding == "zstd":
            return bool(self._zstd.eof)
        if self.coding == "br":
            return bool(self._brotli.is_finished())
        return self._gzip.eof


def scripted(*messages: Message) -> ASGIApp:
    """An app that sends exactly ``messages`` (deep copies), whatever the request."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(copy.deepcopy(message))

    return app


def start(status: int = 200, headers: Sequence[tuple[str, str]] = (), **extra: Any) -> Message:
    """An ``http.response.start`` message with ``headers`` as (str, str) pairs."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return {"type": "http.response.start", "status": status, "headers": raw, **extra}


def body(data: bytes, *, more: bool = False) -> Message:
    """An ``http.response.body`` message."""
    return {"type": "http.response.body", "body": data, "more_body": more}


def json_response(
    data: bytes, headers: dict[str, str] | None = None, status: int = 200
) -> Response:
    """A plain Starlette JSON response (an ASGI app of its own)."""
    return Response(data, status_code=status, headers=headers, media_type="application/json")


def streaming(
    chunks: Sequence[bytes],
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """A Starlette StreamingResponse sending ``chunks`` one message each."""

    async def generate() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return StreamingResponse(generate(), media_type=media_type, headers=headers)


def http_scope(
    method: str = "GET", headers: Iterable[tuple[str, str]] = (), path: str = "/"
) -> Scope:
    """A GET (or ``method``) scope as uvicorn would build it, ASGI spec 2.4."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "extensions": {"http.response.trailers": {}, "http.response.pathsend": {}},
    }


async def idle_receive() -> Message:
    """A client that sent an empty request and then stays connected."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class Exchange:
    """What an app sent for one request, message by message."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages

    @property
    def start(self) -> Message:
        first = self.messages[0]
        assert first["type"] == "http.response.start", self.messages
        return first

    @property
    def status(self) -> int:
        status: int = self.start["status"]
        return status

    @property
    def headers(self) -> Headers:
        return sorted((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.start["headers"])

    def header(self, name: str) -> str | None:
        """The one value of ``name``, None when absent; fails on a repeated header."""
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    @property
    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)


async def call(
    app: ASGIApp,
    accept: str | None = None,
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    send: Callable[[Message], Awaitable[None]] | None = None,
) -> Exchange:
    """One request straight through ``app``; every message it sends, in order."""
    request = [*([("accept-encoding", accept)] if accept is not None else []), *headers]
    messages: list[Message] = []

    async def collect(message: Message) -> None:
        messages.append(copy.deepcopy(message))  # as sent, whatever happens to it later
        if send is not None:
            await send(message)

    await app(http_scope(method, request), idle_receive, collect)
    return Exchange(messages)


def plus_vary(headers: Headers) -> Headers:
    """``headers`` with ``Vary: Accept-Encoding`` added, sorted as Exchange.headers."""
    return sorted([*headers, VARY])


@asynccontextmanager
async def serving(app: ASGIApp, *, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """``app`` behind a real uvicorn on a free loopback port, in this event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        ws="none",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise AssertionError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


# Every coding, and identity.


@pytest.mark.parametrize("coding", CODINGS)
async def test_each_coding_decodes_to_exactly_the_identity_body(coding: str) -> None:
    """Content-Encoding names the coding, Content-Length is the encoded length, Vary added."""
    data = document(100)
    app = json_response(data)
    identity = await call(app)
    sent = await call(CompressionMiddleware(app), coding)
    assert sent.status == 200
    assert len(sent.bodies) == 1
    assert decode(coding, sent.body) == data == identity.body
    assert len(sent.body) < len(data)
    assert sent.headers == sorted(
        [
            ("content-type", "application/json"),
            ("content-length", str(len(sent.body))),
            ("content-encoding", coding),
            VARY,
        ]
    )


@pytest.mark.parametrize("accept", [None, "", "identity", "deflate", "gzip;q=0, br;q=0, zstd;q=0"])
async def test_identity_request_gets_the_apps_bytes(accept: str | None) -> None:
    """Identity chosen: the app's messages exactly, plus Vary."""
    app = json_response(document(100))
    original = await call(app)
    sent = await call(CompressionMiddleware(app), accept)
    assert sent.headers == plus_vary(original.headers)
    assert sent.messages[1:] == original.messages[1:]


async def test_nothing_acceptable_is_sent_as_identity_with_200() -> None:
    """``identity;q=0, *;q=0``: the documented choice is identity, not 406."""
    app = json_response(document(100))
    original = await call(app)
    sent = await call(CompressionMiddleware(app), "identity;q=0, *;q=0")
    assert sent.status == 200
    assert sent.headers == plus_vary(original.headers)
    assert sent.body == original.body


@pytest.mark.parametrize("coding", CODINGS)
async def test_server_order_and_levels_are_the_constructor_arguments(coding: str) -> None:
    """With several acceptable codings the first of ``encodings`` wins, at its level."""
    data = document(100)
    others = [c for c in CODINGS if c != coding]
    middleware = CompressionMiddleware(
        json_response(data), encodings=(coding, *others), levels={"zstd": 19, "br": 11, "gzip": 9}
    )
    sent = await call(middleware, ALL)
    assert sent.header("content-encoding") == coding
    assert sent.body == compress(coding, {"zstd": 19, "br": 11, "gzip": 9}[coding], data)


# Size.


@pytest.mark.parametrize(("size", "compressed"), [(MIN - 1, False), (MIN, True)])
async def test_minimum_size_is_the_threshold(size: int, compressed: bool) -> None:
    """Under ``minimum_size`` bytes: identity (with Vary); at it: compressed."""
    data = json_body(size)
    app = json_response(data)
    original = await call(app)
    sent = await call(CompressionMiddleware(app, minimum_size=MIN), "br")
    if compressed:
        assert sent.header("content-encoding") == "br"
        assert decode("br", sent.body) == data
    else:
        assert sent.headers == plus_vary(original.headers)
        assert sent.body == data


async def test_single_message_without_content_length_is_judged_on_its_size() -> None:
    """No Content-Length: a whole body in one message below the minimum stays identity."""
    small = json_body(MIN - 1)
    app = scripted(start(headers=[("content-type", "application/json")]), body(small))
    sent = await call(CompressionMiddleware(app), "gzip")
    assert sent.header("content-encoding") is None
    assert sent.body == small
    big = json_body(MIN)
    app = scripted(start(headers=[("content-type", "application/json")]), body(big))
    sent = await call(CompressionMiddleware(app), "gzip")
    assert sent.header("content-encoding") == "gzip"
    assert sent.header("content-length") == str(len(sent.body))
    assert decode("gzip", sent.body) == big


@pytest.mark.parametrize(("size", "compressed"), [(MIN - 1, False), (MIN, True)])
async def test_stream_content_length_is_judged_against_the_minimum(
    size: int, compressed: bool
) -> None:
    """A streamed response with Content-Length under the minimum passes as it is; at the
    minimum it is compressed (and the length removed)."""
    data = json_body(size)
    chunks = [data[:100], data[100:]]

    def app() -> StreamingResponse:
        return streaming(chunks, headers={"content-length": str(size)})

    original = await call(app())
    sent = await call(CompressionMiddleware(app(), minimum_size=MIN), "zstd")
    if compressed:
        assert sent.header("content-encoding") == "zstd"
        assert sent.header("content-length") is None
        assert decode("zstd", sent.body) == data
    else:
        assert sent.headers == plus_vary(original.headers)
        assert sent.header("content-length") == str(size)
        assert sent.messages[1:] == original.messages[1:]


@pytest.mark.parametrize("coding", CODINGS)
async def test_body_that_does_not_shrink_is_identity(coding: str) -> None:
    """Random bytes labelled JSON do not get smaller: sent as they are, with Vary."""
    data = os.urandom(600)
    app = json_response(data)
    original = await call(app)
    sent = await call(CompressionMiddleware(app), coding)
    assert sent.headers == plus_vary(original.headers)
    assert sent.header("content-length") == "600"
    assert sent.body == data


# Content types.


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/problem+json",
        "text/html; charset=utf-8",
        "text/plain",
        "text/css",
        "image/svg+xml",
        "application/javascript",
        "application/xml",
        "application/x-ndjson",
        "Application/JSON",
    ],
)
async def test_compressible_types_are_compressed(content_type: str) -> None:
    """JSON, +json, text, +xml (SVG), JavaScript, NDJSON; media types are case-insensitive."""
    data = json_body(2000)
    app = Response(data, headers={"content-type": content_type})
    sent = await call(CompressionMiddleware(app), "gzip")
    assert sent.header("content-encoding") == "gzip"
    assert sent.header("vary") == "Accept-Encoding"
    assert decode("gzip", sent.body) == data


@pytest.mark.parametrize(
    "content_type",
    [
        "image/png",
        "image/jpeg",
        "application/zip",
        "application/gzip",
        "font/woff2",
        "audio/mpeg",
        "video/mp4",
        "application/octet-stream",
        "application/pdf",
        None,
    ],
)
async def test_other_types_pass_untouched_without_vary(content_type: str | None) -> None:
    """Not on the allow list (or no Content-Type at all): the app's bytes and headers."""
    data = json_body(2000)
    app = Response(data, headers={"content-type": content_type} if content_type else None)
    original = await call(app)
    assert (original.header("content-type") is None) == (content_type is None)
    sent = await call(CompressionMiddleware(app), ALL)
    assert sent.messages == original.messages


async def test_content_types_argument_replaces_the_allow_list() -> None:
    """``content_types`` decides: here only image/svg+xml via ``*/*+xml``."""
    data = json_body(2000)
    middleware = CompressionMiddleware(json_response(data), content_types=["*/*+xml"])
    assert (await call(middleware, "br")).header("content-encoding") is None
    svg = CompressionMiddleware(
        Response(data, media_type="image/svg+xml"), content_types=["*/*+xml"]
    )
    assert (await call(svg, "br")).header("content-encoding") == "br"
    assert "application/json" in DEFAULT_CONTENT_TYPES


# Streaming.


STREAM_CHUNKS = [
    b'{"rows": [',
    json.dumps({"id": 1, "text": "first row " * 40}).encode(),
    b", " + json.dumps({"id": 2, "text": "second row " * 400}).encode(),
    b", " + os.urandom(300).hex().encode(),
    b"]}",
]


@pytest.mark.parametrize("coding", CODINGS)
async def test_each_streamed_chunk_decodes_on_arrival(coding: str) -> None:
    """One encoded message per chunk, each decodable to exactly that chunk when it arrives;
    the last one ends the stream. Content-Length (set by the app) is removed."""
    total = str(sum(map(len, STREAM_CHUNKS)))
    app = streaming(STREAM_CHUNKS, headers={"content-length": total, "etag": '"3"'})
    sent = await call(CompressionMiddleware(app), coding)
    assert sent.headers == sorted(
        [
            ("content-type", "application/json"),
            ("content-encoding", coding),
            ("etag", f'"3-{coding}"'),
            VARY,
        ]
    )
    more = [m["more_body"] for m in sent.messages[1:]]
    assert more == [True] * len(STREAM_CHUNKS) + [False]
    decoder = StreamDecoder(coding)
    for chunk, encoded in zip(STREAM_CHUNKS, sent.bodies, strict=False):
        assert encoded, "every chunk is flushed"
        assert decoder.feed(encoded) == chunk
        assert not decoder.finished
    assert decoder.feed(sent.bodies[-1]) == b""
    assert decoder.finished


async def test_empty_chunks_in_a_stream_send_nothing() -> None:
    """An empty non-final chunk is skipped rather than sent as an empty write."""
    chunks = [json_body(600), b"", json_body(600)]
    sent = await call(CompressionMiddleware(streaming(chunks)), "gzip")
    assert len(sent.bodies) == 3
    assert all(sent.bodies)
    assert decode("gzip", sent.body) == chunks[0] + chunks[2]


def sse_app(gates: Sequence[asyncio.Event], events: Sequence[bytes]) -> StreamingResponse:
    """An event stream that waits for ``gates[i]`` before sending ``events[i]``."""

    async def generate() -> AsyncIterator[bytes]:
        for gate, event in zip(gates, events, strict=True):
            await gate.wait()
            yield event

    return StreamingResponse(generate(), media_type="text/event-stream")


EVENTS = [b"event: tick\ndata: 1\n\n", b'data: {"two": 2}\n\n', b"data: three\n\n"]


@pytest.mark.parametrize("coding", CODINGS)
async def test_event_stream_headers_at_once_then_each_event(coding: str) -> None:
    """The headers go out before any event exists, and each event is sent (decodable)
    before the next is produced: the next gate opens only once the previous arrived."""
    gates = [asyncio.Event() for _ in EVENTS]
    middleware = CompressionMiddleware(sse_app(gates, EVENTS))
    queue: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(call(middleware, coding, send=queue.put))
    try:
        async with asyncio.timeout(5):
            head = Exchange([await queue.get()])
            assert head.header("content-encoding") == coding
            assert head.header("content-type") == "text/event-stream; charset=utf-8"
            assert head.header("content-length") is None
            decoder = StreamDecoder(coding)
            for gate, event in zip(gates, EVENTS, strict=True):
                assert queue.empty()
                gate.set()
                message = await queue.get()
                assert message["more_body"] is True
                assert decoder.feed(message["body"]) == event
            last = await queue.get()
            assert last["more_body"] is False
            assert decoder.feed(last["body"]) == b""
            assert decoder.finished
            await task
    finally:
        task.cancel()


@pytest.mark.parametrize("coding", CODINGS)
async def test_event_stream_over_a_real_server_decodes_event_by_event(coding: str) -> None:
    """Through uvicorn and TCP: each event can be decoded from the bytes received so far,
    while the server is still waiting to produce the next one."""
    gates = [asyncio.Event() for _ in EVENTS]
    app = CompressionMiddleware(sse_app(gates, EVENTS))
    # The headers arrive while the first event is still held back by its gate.
    async with (
        serving(app) as url,
        httpx.AsyncClient(timeout=5) as client,
        client.stream("GET", url, headers={"accept-encoding": coding}) as response,
    ):
        assert response.headers["content-encoding"] == coding
        assert response.headers["vary"] == "Accept-Encoding"
        assert "content-length" not in response.headers
        decoder = StreamDecoder(coding)
        raw = response.aiter_raw()
        async with asyncio.timeout(5):
            for gate, event in zip(gates, EVENTS, strict=True):
                gate.set()
                received = b""
                while len(received) < len(event):
                    received += decoder.feed(await anext(raw))
                assert received == event
            rest = b"".join([decoder.feed(chunk) async for chunk in raw])
        assert rest == b""
        assert decoder.finished


@pytest.mark.parametrize("coding", CODINGS)
async def test_large_bodies_compressed_in_worker_threads_are_correct(coding: str) -> None:
    """``thread_minimum_size=1024``: a 200 KB body, whole or in 50 KB chunks, decodes exactly.

    (Which thread ran the compressor is not observable without patching; only the
    result is checked.)
    """
    data = document(5000)[: 200 * 1024]
    assert len(data) == 200 * 1024
    whole = await call(CompressionMiddleware(json_response(data), thread_minimum_size=1024), coding)
    assert whole.header("content-length") == str(len(whole.body))
    assert decode(coding, whole.body) == data
    chunks = [data[i : i + 50 * 1024] for i in range(0, len(data), 50 * 1024)]
    middleware = CompressionMiddleware(streaming(chunks), thread_minimum_size=1024)
    streamed = await call(middleware, coding)
    decoder = StreamDecoder(coding)
    assert [decoder.feed(b) for b in streamed.bodies] == [*chunks, b""]
    assert decoder.finished


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_zstd_window_stays_within_8_mb_at_level_19(streamed: bool) -> None:
    """RFC 9659: a zstd content coding needs no window over 8 MB, even at level 19."""
    block = document(2000)
    data = (block * (10 * 1024 * 1024 // len(block) + 1))[: 10 * 1024 * 1024]
    if streamed:
        app: ASGIApp = streaming(
            [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
        )
    else:
        app = json_response(data)
    sent = await call(CompressionMiddleware(app, levels={"zstd": 19}), "zstd")
    assert sent.header("content-encoding") == "zstd"
    assert zstandard.get_frame_parameters(sent.bodies[0]).window_size <= 8 * 1024 * 1024
    assert decode("zstd", sent.body) == data


# Left alone.


PASS_THROUGH = [
    # (id, app's messages, request headers, Vary added)
    (
        "already encoded",
        [
            start(headers=[("content-type", "application/json"), ("content-encoding", "gzip")]),
            body(compress("gzip", 6, json_body(2000))),
        ],
        [],
        False,
    ),
    ("204", [start(204, [("content-type", "application/json")]), body(b"")], [], False),
    (
        "206",
        [
            start(
                206,
                [
                    ("content-type", "application/json"),
                    ("content-range", "bytes 0-1999/4000"),
                    ("content-length", "2000"),
                ],
            ),
            body(json_body(2000)),
        ],
        [],
        False,
    ),
    (
        "304",
        [start(304, [("etag", '"7"'), ("content-type", "application/json")]), body(b"")],
        [],
        True,
    ),
    ("1xx", [start(103, [("content-type", "text/plain")]), body(json_body(2000))], [], False),
    (
        "request Range",
        [start(headers=[("content-type", "application/json")]), body(json_body(2000))],
        [("range", "bytes=0-99")],
        True,
    ),
    (
        "request no-transform",
        [start(headers=[("content-type", "application/json")]), body(json_body(2000))],
        [("cache-control", "max-age=0, No-Transform")],
        True,
    ),
    (
        "response no-transform",
        [
            start(
                headers=[
                    ("content-type", "application/json"),
                    ("cache-control", "public, no-transform"),
                ]
            ),
            body(json_body(2000)),
        ],
        [],
        False,
    ),
]


@pytest.mark.parametrize(
    ("messages", "request_headers", "vary"),
    [case[1:] for case in PASS_THROUGH],
    ids=[case[0] for case in PASS_THROUGH],
)
async def test_left_alone(messages: list[Message], request_headers: Headers, vary: bool) -> None:
    """Byte for byte what the app sent; Vary added only where the docstring says."""
    app = scripted(*messages)
    original = await call(app)
    sent = await call(CompressionMiddleware(app), ALL, headers=request_headers)
    assert sent.headers == (plus_vary(original.headers) if vary else original.headers)
    assert sent.status == original.status
    assert sent.messages[1:] == original.messages[1:]


@pytest.mark.parametrize("coding", CODINGS)
async def test_head_has_the_headers_get_would_have(coding: str) -> None:
    """HEAD: every header GET gets, Content-Length of the encoded body included
    (RFC 9110 section 9.3.2), and no body."""
    app = json_response(document(100), headers={"etag": '"7"', "accept-ranges": "bytes"})
    middleware = CompressionMiddleware(app)
    get = await call(middleware, coding)
    head = await call(middleware, coding, method="HEAD")
    assert head.header("etag") == f'"7-{coding}"'
    assert head.header("content-encoding") == coding
    assert head.header("accept-ranges") is None
    assert head.headers == get.headers
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.head("/", headers={"accept-encoding": coding})
        full = await client.get("/", headers={"accept-encoding": coding})
    assert response.content == b""
    assert response.headers["content-length"] == full.headers["content-length"]
    assert int(response.headers["content-length"]) < len(document(100))


async def test_head_under_the_minimum_is_identity() -> None:
    """HEAD with a Content-Length below the minimum gets GET's identity headers."""
    app = json_response(json_body(MIN - 1))
    original = await call(app, method="HEAD")
    head = await call(CompressionMiddleware(app), "br", method="HEAD")
    assert head.headers == plus_vary(original.headers)


@pytest.mark.parametrize(("content_type", "vary"), [("text/plain", True), ("image/png", False)])
async def test_pathsend_passes_in_order(content_type: str, vary: bool) -> None:
    """``http.response.pathsend`` after the start: both passed on, in order, unchanged
    (a compressible type gets Vary, as every response of such a type does)."""
    head = start(
        headers=[("content-type", content_type), ("content-length", "4000"), ("etag", '"9"')]
    )
    pathsend = {"type": "http.response.pathsend", "path": "/srv/files/report.txt"}
    app = scripted(head, pathsend)
    original = await call(app)
    sent = await call(CompressionMiddleware(app), ALL)
    assert [m["type"] for m in sent.messages] == ["http.response.start", "http.response.pathsend"]
    assert sent.headers == (plus_vary(original.headers) if vary else original.headers)
    assert sent.messages[1] == pathsend


async def test_unknown_message_passes_in_order_and_the_rest_is_left_alone() -> None:
    """A message this layer does not know, right after the start: everything passes."""
    app = scripted(
        start(headers=[("content-type", "application/json")]),
        {"type": "http.response.x-debug", "note": "hello"},
        body(json_body(2000)),
    )
    original = await call(app)
    sent = await call(CompressionMiddleware(app), ALL)
    assert sent.headers == plus_vary(original.headers)
    assert sent.messages[1:] == original.messages[1:]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("coding", CODINGS)
async def test_trailers_follow_the_compressed_body(coding: str, streamed: bool) -> None:
    """``http.response.trailers`` after the last body passes unchanged, after it."""
    data = json_body(3000)
    parts = [data[:1000], data[1000:]] if streamed else [data]
    trailers = {
        "type": "http.response.trailers",
        "headers": [(b"x-checksum", b"abc")],
        "more_trailers": False,
    }
    app = scripted(
        start(headers=[("content-type", "application/json")], trailers=True),
        *[body(p, more=i + 1 < len(parts)) for i, p in enumerate(parts)],
        trailers,
    )
    sent = await call(CompressionMiddleware(app), coding)
    assert sent.start["trailers"] is True
    assert sent.header("content-encoding") == coding
    assert sent.messages[-1] == trailers
    assert sent.messages[-2]["type"] == "http.response.body"
    assert sent.messages[-2]["more_body"] is False
    assert decode(coding, sent.body) == data


# Vary.


VARY_CASES = [
    # (id, the app's Vary headers, the one Vary header sent: its tokens in any order)
    ("none", [], "Accept-Encoding"),
    ("Origin", ["Origin"], "Origin, Accept-Encoding"),
    ("lower case, already there", ["accept-encoding"], "accept-encoding"),
    ("listed with another", ["Origin, Accept-Encoding"], "Origin, Accept-Encoding"),
    ("two headers", ["Origin", "Accept-Encoding"], "Origin, Accept-Encoding"),
    ("two headers, one repeated", ["Origin, Cookie", "origin"], "Origin, Cookie, Accept-Encoding"),
    ("star", ["*"], "*"),
]


@pytest.mark.parametrize("accept", ["br", "identity"])
@pytest.mark.parametrize(
    ("app_vary", "sent_vary"), [c[1:] for c in VARY_CASES], ids=[c[0] for c in VARY_CASES]
)
async def test_vary_is_merged_once(accept: str, app_vary: list[str], sent_vary: str) -> None:
    """Accept-Encoding merged into Vary: once, whatever the case, ``*`` respected;
    the same on compressed and identity responses."""
    app = scripted(
        start(headers=[("content-type", "application/json"), *[("vary", v) for v in app_vary]]),
        body(json_body(2000)),
    )
    sent = await call(CompressionMiddleware(app), accept)
    assert sent.header("content-encoding") == (None if accept == "identity" else accept)
    values = [v.decode() for k, v in sent.start["headers"] if k == b"vary"]
    assert len(values) == 1, values
    tokens = [token.strip() for token in values[0].split(",")]
    assert sorted(tokens) == sorted(sent_vary.split(", ")), "the same tokens, none repeated"


@pytest.mark.parametrize(
    ("data", "accept", "status"),
    [(json_body(2000), "identity", 200), (json_body(MIN - 1), "br", 200), (b"", "br", 304)],
    ids=["identity requested", "below the minimum", "304"],
)
async def test_vary_on_responses_that_could_have_been_compressed(
    data: bytes, accept: str, status: int
) -> None:
    """Identity by request or by size, and 304s, still say Vary: Accept-Encoding."""
    app = json_response(data, status=status)
    sent = await call(CompressionMiddleware(app), accept)
    assert sent.status == status
    assert sent.header("content-encoding") is None
    assert sent.header("vary") == "Accept-Encoding"


# ETags and conditional requests.


@pytest.mark.parametrize("coding", CODINGS)
async def test_strong_etag_is_suffixed_and_accept_ranges_removed(coding: str) -> None:
    """ "7" becomes "7-<coding>"; byte ranges of the identity body no longer apply."""
    app = json_response(document(100), headers={"etag": '"7"', "accept-ranges": "bytes"})
    sent = await call(CompressionMiddleware(app), coding)
    assert sent.header("etag") == f'"7-{coding}"'
    assert sent.header("accept-ranges") is None
    assert encoded_etag('"7"', coding) == f'"7-{coding}"'


@pytest.mark.parametrize("coding", CODINGS)
async def test_weak_etag_is_kept(coding: str) -> None:
    """A weak tag already allows other encodings of the same content."""
    app = json_response(document(100), headers={"etag": 'W/"7"'})
    sent = await call(CompressionMiddleware(app), coding)
    assert sent.header("content-encoding") == coding
    assert sent.header("etag") == 'W/"7"'


async def test_identity_keeps_etag_and_accept_ranges() -> None:
    """An identity response keeps the app's validators and ranges."""
    app = json_response(document(100), headers={"etag": '"7"', "accept-ranges": "bytes"})
    sent = await call(CompressionMiddleware(app), "identity")
    assert sent.header("etag") == '"7"'
    assert sent.header("accept-ranges") == "bytes"


def test_strip_etag_codings() -> None:
    """Every known suffix comes off; the first coding found is reported."""
    assert strip_etag_codings('"7-br"') == ('"7"', "br")
    assert strip_etag_codings('"6-gzip", W/"7-zstd"') == ('"6", W/"7"', "gzip")
    assert strip_etag_codings('"7"') == ('"7"', None)
    assert strip_etag_codings('"7-lzma"') == ('"7-lzma"', None)


CURRENT = '"7"'


async def validating_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A resource at ETag "7" with real validators; it echoes the ones it was given.

    If-None-Match (weak comparison) answers 304; If-Match (strong) answers 412 on a miss.
    """
    request = {k.decode(): v.decode() for k, v in scope["headers"]}
    seen = {f"x-seen-{k}": request[k] for k in ("if-none-match", "if-match") if k in request}
    headers = {"etag": CURRENT, **seen}
    none_match = request.get("if-none-match")
    if_match = request.get("if-match")
    if none_match is not None and any(
        t.strip() == "*" or t.strip().removeprefix("W/") == CURRENT for t in none_match.split(",")
    ):
        response = Response(status_code=304, headers=headers)
    elif if_match is not None and not any(t.strip() in ("*", CURRENT) for t in if_match.split(",")):
        response = Response(status_code=412, headers=headers)
    else:
        response = json_response(document(100), headers=headers)
    await response(scope, receive, send)


@pytest.mark.parametrize("coding", CODINGS)
async def test_if_none_match_with_the_encoded_tag_is_304_with_that_tag(coding: str) -> None:
    """The app sees the tag as sent (not its own), answers 200; the layer, about to send
    the bytes the client holds under that tag, answers 304 with the tag and Vary."""
    middleware = CompressionMiddleware(validating_app)
    first = await call(middleware, coding)
    tag = first.header("etag")
    assert tag == f'"7-{coding}"'
    sent = await call(middleware, coding, headers=[("if-none-match", tag)])
    assert sent.status == 304
    assert sent.header("x-seen-if-none-match") == tag
    assert sent.header("etag") == tag
    assert sent.header("vary") == "Accept-Encoding"
    assert sent.header("content-encoding") is None
    assert sent.body == b""


async def test_if_none_match_list_is_compared_tag_by_tag_weakly() -> None:
    """Any tag of a list may name the encoded representation, a weak one too."""
    middleware = CompressionMiddleware(validating_app)
    sent = await call(middleware, "br", headers=[("if-none-match", '"6-br", W/"7-br"')])
    assert sent.header("x-seen-if-none-match") == '"6-br", W/"7-br"'
    assert sent.status == 304
    assert sent.header("etag") == '"7-br"'


async def test_if_none_match_that_misses_gets_the_compressed_200() -> None:
    """A stale tag: neither the app nor the layer matches it; the 200 is compressed."""
    middleware = CompressionMiddleware(validating_app)
    sent = await call(middleware, "gzip", headers=[("if-none-match", '"6-gzip"')])
    assert sent.status == 200
    assert sent.header("x-seen-if-none-match") == '"6-gzip"'
    assert sent.header("etag") == '"7-gzip"'
    assert decode("gzip", sent.body) == document(100)


async def streamed_tagged_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A JSON stream in three chunks under the strong tag "7"."""
    start = {"type": "http.response.start", "status": 200}
    headers = [(b"content-type", b"application/json"), (b"etag", CURRENT.encode())]
    await send({**start, "headers": headers})
    for n in range(3):
        await send({"type": "http.response.body", "body": document(100), "more_body": n < 2})


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("app", [validating_app, streamed_tagged_app], ids=["whole", "streamed"])
async def test_the_encoded_tag_is_304_for_streams_and_head_too(method: str, app: ASGIApp) -> None:
    middleware = CompressionMiddleware(app)
    sent = await call(middleware, "br", method=method, headers=[("if-none-match", '"7-br"')])
    assert sent.status == 304
    assert sent.header("etag") == '"7-br"'
    assert sent.header("content-length") is None
    assert sent.body == b""
    assert middleware.stats.streams_open == 0


@pytest.mark.parametrize(
    ("accept", "etag"), [("gzip", '"7-gzip"'), ("identity", '"7"')], ids=["gzip", "identity"]
)
async def test_if_none_match_for_another_coding_is_not_a_match(accept: str, etag: str) -> None:
    """A tag of the br representation does not validate the one now selected:
    200 with that representation (and its own tag), never a 304 naming br."""
    middleware = CompressionMiddleware(validating_app)
    sent = await call(middleware, accept, headers=[("if-none-match", '"7-br"')])
    assert sent.status == 200
    assert sent.header("etag") == etag
    assert sent.header("x-seen-if-none-match") == '"7-br"'


@pytest.mark.parametrize("coding", CODINGS)
async def test_if_match_with_the_encoded_tag_reaches_the_app_stripped(coding: str) -> None:
    """The app's strong If-Match check sees "7" and lets the request through."""
    middleware = CompressionMiddleware(validating_app)
    sent = await call(middleware, coding, method="PUT", headers=[("if-match", f'"7-{coding}"')])
    assert sent.status == 200
    assert sent.header("x-seen-if-match") == CURRENT
    missed = await call(middleware, coding, method="PUT", headers=[("if-match", f'"6-{coding}"')])
    assert missed.status == 412
    assert missed.header("x-seen-if-match") == '"6"'


# Resources and statistics.


@pytest.mark.parametrize("coding", CODINGS)
async def test_stream_counts_and_frees_its_compressor(coding: str) -> None:
    """A normal stream: one open compressor while it runs, none after; bytes counted."""
    stats = CompressionStats()
    observed: list[int] = []

    async def generate() -> AsyncIterator[bytes]:
        for chunk in STREAM_CHUNKS:
            observed.append(stats.streams_open)
            yield chunk

    app = StreamingResponse(generate(), media_type="application/json")
    sent = await call(CompressionMiddleware(app, stats=stats), coding)
    assert observed[1:] == [1] * (len(STREAM_CHUNKS) - 1)
    assert stats.streams_open == 0
    assert stats.responses == {coding: 1}
    assert stats.bytes_in == {coding: sum(map(len, STREAM_CHUNKS))}
    assert stats.bytes_out == {coding: len(sent.body)}


async def test_whole_bodies_are_counted_by_coding() -> None:
    """Responses, bytes in and out per coding; identity responses are not counted."""
    stats = CompressionStats()
    data = document(100)
    middleware = CompressionMiddleware(json_response(data), stats=stats)
    sizes: dict[str, int] = {}
    for coding in ("br", "gzip", "gzip"):
        sizes[coding] = len((await call(middleware, coding)).body)
    await call(middleware, "identity")
    assert stats.responses == {"br": 1, "gzip": 2}
    assert stats.bytes_in == {"br": len(data), "gzip": 2 * len(data)}
    assert stats.bytes_out == {"br": sizes["br"], "gzip": 2 * sizes["gzip"]}
    assert stats.streams_open == 0
    assert stats.as_dict()["responses"] == {"br": 1, "gzip": 2}


@pytest.mark.parametrize("coding", CODINGS)
async def test_app_failing_mid_stream_frees_the_compressor(coding: str) -> None:
    """The app raises after one chunk: the error propagates, the compressor is dropped."""
    stats = CompressionStats()

    async def generate() -> AsyncIterator[bytes]:
        yield json_body(1000)
        assert stats.streams_open == 1
        raise RuntimeError("the database went away")

    app = StreamingResponse(generate(), media_type="application/json")
    with pytest.raises(RuntimeError, match="database went away"):
        await call(CompressionMiddleware(app, stats=stats), coding)
    assert stats.streams_open == 0


@pytest.mark.parametrize("coding", CODINGS)
async def test_client_disconnect_mid_stream_frees_the_compressor(coding: str) -> None:
    """The server's send raises OSError (the peer is gone): the compressor is dropped."""
    stats = CompressionStats()
    sends = 0

    async def broken_pipe(message: Message) -> None:
        nonlocal sends
        sends += 1
        if sends == 3:  # start, first chunk, then the connection is gone
            assert stats.streams_open == 1
            raise BrokenPipeError("peer closed")

    app = streaming([json_body(1000)] * 5)
    with pytest.raises(ClientDisconnect):
        await call(CompressionMiddleware(app, stats=stats), coding, send=broken_pipe)
    assert stats.streams_open == 0


@pytest.mark.parametrize("coding", CODINGS)
async def test_cancelled_app_frees_the_compressor(coding: str) -> None:
    """The request task cancelled while the app waits between chunks."""
    stats = CompressionStats()
    gates = [asyncio.Event(), asyncio.Event()]
    app = sse_app(gates, EVENTS[:2])
    queue: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(
        call(CompressionMiddleware(app, stats=stats), coding, send=queue.put)
    )
    gates[0].set()
    async with asyncio.timeout(5):
        await queue.get()  # start
        await queue.get()  # the first event
    assert stats.streams_open == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stats.streams_open == 0


# Construction.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encodings": ("zstd", "lzma")}, r"encodings: distinct codings of .*'lzma'"),
        (
            {"encodings": ("br", "gzip", "br")},
            r"encodings: distinct codings of .*'br', 'gzip', 'br'",
        ),
        ({"levels": {"zstd": 20}}, r"^zstd level must be from 1 to 19, got 20$"),
        ({"levels": {"br": 12}}, r"^br level must be from 0 to 11, got 12$"),
        ({"levels": {"gzip": 0}}, r"^gzip level must be from 1 to 9, got 0$"),
        ({"levels": {"deflate": 1}}, r"^unknown content coding 'deflate'"),
        ({"content_types": ["json"]}, r"content type pattern 'json': use type/sub"),
        ({"content_types": ["application/*json"]}, r"content type pattern 'application/\*json'"),
        ({"minimum_size": -1}, r"minimum_size and thread_minimum_size must not be negative"),
        ({"thread_minimum_size": -1}, r"minimum_size and thread_minimum_size must not be negative"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    """Each invalid argument is refused at construction with a message naming it."""
    with pytest.raises(ValueError, match=message):
        CompressionMiddleware(json_response(b"{}"), **kwargs)


def test_valid_extremes_are_accepted() -> None:
    """The ends of every level range, zero sizes and a single coding are valid."""
    middleware = CompressionMiddleware(
        json_response(b"{}"),
        encodings=["gzip"],
        levels={"zstd": 19, "br": 0, "gzip": 9},
        minimum_size=0,
        thread_minimum_size=0,
    )
    assert middleware.encodings == ("gzip",)


# Other scopes.


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_other_scopes_pass_straight_through(scope_type: str) -> None:
    """The app gets the very scope, receive and send the server passed."""
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def send(message: Message) -> None:
        raise AssertionError("nothing to send")

    scope: Scope = {
        "type": scope_type,
        "headers": [(b"accept-encoding", b"br")],
        "asgi": {"version": "3.0"},
    }
    await CompressionMiddleware(app)(scope, idle_receive, send)
    assert seen == [(scope, idle_receive, send)]
    assert seen[0][0] is scope
    assert seen[0][2] is send
