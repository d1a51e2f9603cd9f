"""CompressionMiddleware and validators: the strong ETag of each encoded representation,
weak tags kept, and conditional requests (If-None-Match, If-Match) with encoded tags.
"""

from __future__ import annotations

import pytest
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.codings import CODINGS, encoded_etag
from service.core.compression import CompressionMiddleware, strip_etag_codings
from tests.helpers import call, decode, document, json_response


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


async def created_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A create-only write (If-None-Match: *) that succeeded: 201 with the new tag."""
    await json_response(document(100), status=201, headers={"etag": CURRENT})(scope, receive, send)


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
@pytest.mark.parametrize("tag", ["*", '"7-br"', 'W/"7-br"'])
async def test_a_write_is_never_turned_into_a_304(method: str, tag: str) -> None:
    """A write's If-None-Match was its precondition, met when the app answered: the
    answer goes out encoded, as it is, though the tag names the encoded bytes."""
    middleware = CompressionMiddleware(created_app)
    sent = await call(middleware, "br", method=method, headers=[("if-none-match", tag)])
    assert sent.status == 201
    assert sent.header("etag") == '"7-br"'
    assert decode("br", sent.body) == document(100)


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
