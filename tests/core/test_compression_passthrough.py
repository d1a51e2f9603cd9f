"""CompressionMiddleware leaves alone what it must not touch: encoded, partial, bodiless
and no-transform responses, HEAD, pathsend, unknown messages, trailers, other scopes;
and it merges ``Vary: Accept-Encoding`` exactly once wherever a coding could apply.
"""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from service.core.codings import CODINGS, compress
from service.core.compression import CompressionMiddleware
from tests.helpers import (
    ALL,
    MIN,
    Headers,
    body,
    call,
    decode,
    document,
    idle_receive,
    json_body,
    json_response,
    plus_vary,
    scripted,
    start,
)

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
