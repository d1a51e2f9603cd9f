"""The write path is indistinguishable from the full stack.

One matrix of PUTs (new ids, existing ones, tombstones; preconditions that hold, fail
or are malformed; media types; bodies that are invalid, too large, in chunks, cut off;
ids the route refuses; requests the compression layer treats apart) runs twice, step
for step: once through the write path, on ids of its own, and once through the service
built without it, on twin ids, both sharing one lifespan state. Every pair of
responses must be the same ASGI messages (status, headers in order, body bytes) once
the id and the write's timestamp are written alike, and what each stored must be the
same. The write path must also really answer the plain writes and pass the rest on.
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import AsyncIterator
from typing import Any

import brotli
import orjson
import pytest
import zstandard
from starlette.types import ASGIApp, Message

from service.api.writes import WritePath
from service.config import Settings
from service.model import StoredResult
from tests.helpers import unique_prefix
from tests.support.asgi import Chunks, Headers, Recorder, exchange, full_stack

JSON = ("content-type", "application/json")
DOC = b'{"rows": [1, 2, 3], "name": "write"}'
LIMIT = 4096
DECODE = {
    b"gzip": gzip.decompress,
    b"br": brotli.decompress,
    b"zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}


def alike(messages: list[Message], analysis_id: str, *, exact: bool = True) -> list[Message]:
    """``messages`` with the id and the write's timestamp written as placeholders; an
    encoded body decoded first (its bytes hold the id), its length set aside.

    Not ``exact``: whether a body was encoded is set aside too (its Content-Encoding, its
    tag's coding). Answers of a hundred bytes may or may not shrink when compressed,
    and the twins' ids and timestamps differ: one twin's answer can shrink while the
    other's does not, though both went through the same layer.
    """
    marked: list[Message] = []
    coding = None
    for message in messages:
        if message["type"] == "http.response.start":
            coding = dict(message["headers"]).get(b"content-encoding")
            headers = message["headers"]
            if coding is not None:
                headers = [(k, b"<n>" if k == b"content-length" else v) for k, v in headers]
            if not exact:
                headers = [
                    (k, re.sub(rb"-(zstd|br|gzip)\"$", b'"', v) if k == b"etag" else v)
                    for k, v in headers
                    if k not in (b"content-encoding", b"content-length")
                ]
            message = {**message, "headers": headers}
        elif coding is not None and message.get("body"):
            message = {**message, "body": DECODE[coding](message["body"])}
        text = orjson.dumps(message, default=lambda b: b.decode("latin-1")).decode()
        text = text.replace(analysis_id, "<id>")
        text = re.sub(r'\\"updated_at\\":\\"[^"\\]*\\"', '\\"updated_at\\":<t>', text)
        marked.append(orjson.loads(text))
    return marked


@pytest.fixture(params=[512, 0], ids=["min-size-512", "min-size-0"])
async def service(
    request: pytest.FixtureRequest, pg_url: str, redis_url: str
) -> AsyncIterator[tuple[ASGIApp, dict[str, Any], Settings]]:
    """The service without its fast paths, started; its state; its settings. A minimum
    compression size of 0 sends every answer through the compression layer."""
    prefix = unique_prefix()
    settings = Settings(
        database_url=pg_url,
        redis_url=redis_url,
        cache_prefix=prefix,
        max_result_bytes=LIMIT,
        compression_min_size=request.param,
    )
    async with full_stack(settings) as (app, state):
        yield app, state, settings


@pytest.fixture
def layers(
    service: tuple[ASGIApp, dict[str, Any], Settings],
) -> tuple[ASGIApp, WritePath, Recorder, dict[str, Any]]:
    full, state, settings = service
    behind = Recorder(full)
    fast = WritePath(behind, minimum_size=settings.compression_min_size)
    return full, fast, behind, state


PRECONDITIONS: list[Headers] = [
    [],
    [("if-match", '"1"')],
    [("if-match", '"2"')],
    [("if-match", "*")],
    [("if-match", 'W/"1"')],
    [("if-match", '"1", "2"')],
    [("if-match", '"01"')],
    [("if-match", f'"{"9" * 4301}"')],
    [("if-none-match", "*")],
    [("if-none-match", '"1"')],
    [("if-match", "*"), ("if-none-match", "*")],
    [("if-match", '"1"'), ("if-match", '"7"')],
]
MEDIA: list[Headers] = [
    [JSON],
    [("content-type", "application/json; charset=utf-8")],
    [("content-type", "Application/Merge-Patch+JSON")],
    [("content-type", "text/plain")],
    [],
    [("content-type", "application/json"), ("content-type", "text/plain")],
]
BODIES: list[tuple[Headers, Chunks]] = [
    ([], [DOC]),
    ([("content-length", str(len(DOC)))], [DOC]),
    ([], [DOC[:7], DOC[7:20], DOC[20:]]),
    ([], [b'{"a": 1e-16383}']),  # JSONB writes this number out in full: too large
    ([], [b"[1, 2]"]),
    ([], [b"{not json"]),
    ([], [b""]),
    ([], [b"\xff\xfe{}"]),
    ([], [b"{" + b" " * LIMIT + b"}"]),
    ([("content-length", str(LIMIT + 1))], [b"{}"]),
    ([("content-length", "12x")], [b"{}"]),
    ([("content-length", "9" * 5000)], [b"{}"]),
    ([], [DOC[:10], None]),
]
OTHERS: list[Headers] = [
    [],
    [("accept-encoding", "gzip, deflate, br, zstd")],
    [("range", "bytes=0-9")],
    [("cache-control", "no-transform")],
]


async def test_the_write_path_sends_exactly_what_the_full_stack_sends(
    layers: tuple[ASGIApp, WritePath, Recorder, dict[str, Any]],
) -> None:
    full, fast, behind, state = layers
    results = state["result_cache"]
    run = unique_prefix()
    cases = [
        *itertools.product(PRECONDITIONS, [[JSON]], BODIES[:2], OTHERS[:2]),
        *itertools.product(PRECONDITIONS[:1], MEDIA, BODIES, OTHERS[:2]),
        *itertools.product(PRECONDITIONS[:4], [[JSON]], BODIES[:1], OTHERS),
    ]
    compared = answered = 0
    for n, (precondition, media, (length, chunks), other) in enumerate(cases):
        # Each case runs on a new id, an existing one (version 1) and a tombstone.
        for start in ("new", "existing", "deleted"):
            twins = {way: f"w{n}-{start}-{way}-{run}" for way in ("fast", "full")}
            if start != "new":
                for rid in twins.values():
                    await results.put(rid, {"before": True})
                    if start == "deleted":
                        await results.delete(rid)
            headers = [*precondition, *media, *length, *other]
            calls = behind.calls
            got = await exchange(fast, state, "PUT", f"/results/{twins['fast']}", headers, chunks)
            answered += behind.calls == calls
            expected = await exchange(
                full, state, "PUT", f"/results/{twins['full']}", headers, chunks
            )
            case = (start, headers, chunks)
            exact = fast.minimum_size > 0  # then no answer here is long enough to encode
            assert alike(got, twins["fast"], exact=exact) == alike(
                expected, twins["full"], exact=exact
            ), case
            stored = [await results.get(rid) for rid in (twins["fast"], twins["full"])]
            assert [_kept(read.found) for read in stored] == [_kept(stored[1].found)] * 2, case
            compared += 1
    assert compared == 3 * len(cases)
    if fast.minimum_size:
        assert answered > 50, "the write path must really answer the plain writes"
    else:  # every answer could be encoded: each went through the compression layer
        assert answered == 0


def _kept(found: object) -> tuple[object, ...]:
    """What a write left behind, whatever its id and moment."""
    if isinstance(found, StoredResult):
        return ("stored", found.meta.version, found.body)
    return ("absent", getattr(found, "version", None))


async def test_the_write_path_answers_plain_writes_and_leaves_the_rest_alone(
    layers: tuple[ASGIApp, WritePath, Recorder, dict[str, Any]],
) -> None:
    _, fast, behind, state = layers
    rid = f"plain-{unique_prefix()}"

    async def reaches_the_stack(
        headers: Headers, chunks: Chunks = (DOC,), target: str = ""
    ) -> bool:
        calls = behind.calls
        await exchange(fast, state, "PUT", target or f"/results/{rid}", headers, chunks)
        return behind.calls > calls

    # With a minimum compression size of 0 even a plain write's answer could be
    # encoded: then the route sends it, through the compression layer.
    handed_over = fast.minimum_size == 0
    assert await reaches_the_stack([JSON]) == handed_over  # created
    assert await reaches_the_stack([JSON]) == handed_over  # replaced
    assert await reaches_the_stack([JSON, ("if-match", '"2"')]) == handed_over
    assert await reaches_the_stack([("content-type", "application/ld+json")]) == handed_over
    assert await reaches_the_stack([JSON, ("accept-encoding", "gzip")]) == handed_over
    for odd in (
        [JSON, ("if-match", '"3"'), ("if-match", '"4"')],  # refused before the body
        [JSON, ("if-none-match", '"3"')],
        [("content-type", "text/plain")],
        [],
        [JSON, ("range", "bytes=0-1")],
        [JSON, ("cache-control", "no-transform")],
        [JSON, ("if-match", '"1"')],  # a precondition that fails: the route answers it
    ):
        assert await reaches_the_stack(odd), odd
    assert await reaches_the_stack([JSON], (b"[1]",))  # an error: the route answers it
    assert await reaches_the_stack([JSON], target="/results/a b")
    assert await reaches_the_stack([JSON], target="/results/")
    # Five plain writes, and the two the compression layer treats apart.
    assert (await state["result_cache"].get(rid)).found.meta.version == 7
