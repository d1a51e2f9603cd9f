"""CompressionMiddleware: whether and how a response is compressed.

Every coding against identity, the server's order and levels, the size threshold, the
content types it compresses, and the arguments it refuses. The middleware is called
directly with a hand-made scope (tests/helpers.py: ``call``) and every message it sends
is collected, so the bytes on the wire can be checked exactly; the bodies are decoded
with zstandard, brotli and zlib, never by an HTTP client.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from starlette.responses import Response, StreamingResponse

from service.core.codings import CODINGS, compress
from service.core.compression import DEFAULT_CONTENT_TYPES, CompressionMiddleware
from tests.helpers import (
    ALL,
    MIN,
    VARY,
    body,
    call,
    decode,
    document,
    json_body,
    json_response,
    plus_vary,
    scripted,
    start,
    streaming,
)

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
