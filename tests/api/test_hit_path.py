"""The hit path is indistinguishable from the full stack.

One matrix of reads (methods, Accept-Encoding values, conditionals, Range,
no-transform, ids present, small, deleted, missing and invalid) goes through the hit
path and through the service built without it, sharing one lifespan state (so one L1),
with the cache in each of its shapes: L1 in front of Redis (hits), Redis alone (each
read a shared hit) and turned off (each read a database read). Every response must be
the same ASGI messages: status, headers in order, body bytes. The hit path must also
really answer the plain reads, and leave the odd ones alone.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp

from service.api.reads import HitPath
from service.config import Settings
from tests.helpers import next_second, unique_prefix
from tests.support.asgi import Headers, Recorder, exchange, full_stack

BIG = (
    b'{"rows": ['
    + b", ".join(b'{"id": %d, "label": "segment-%d"}' % (n, n % 17) for n in range(400))
    + b"]}"
)
SMALL = b'{"small": true}'

ACCEPTS: list[str | None] = [
    None,
    "",
    "identity",
    "gzip",
    "br",
    "zstd",
    "gzip, deflate, br, zstd",  # what Chrome sends
    "gzip, deflate",  # curl --compressed on older builds
    "br;q=0, gzip",
    "*",
    "*;q=0",
    "identity;q=0",
    "identity;q=0, *;q=0",
    "gzip;q=0.5, br;q=0.9",
    "x-gzip",
    "GZIP",
    "zstd;q=abc, gzip",
    "deflate",
]


CACHE_SHAPES: dict[str, dict[str, Any]] = {
    "l1": {},
    "redis-only": {"l1_max_bytes": 0},
    "off": {"l1_max_bytes": 0, "redis_url": None},
}


@pytest.fixture(params=list(CACHE_SHAPES))
async def service(
    request: pytest.FixtureRequest, pg_url: str, redis_url: str
) -> AsyncIterator[tuple[ASGIApp, dict[str, Any], Settings]]:
    """The service without a hit path, started; its state; its settings. Once per
    shape of the cache."""
    prefix = unique_prefix()
    shape: dict[str, Any] = {"redis_url": redis_url, **CACHE_SHAPES[request.param]}
    settings = Settings(database_url=pg_url, cache_prefix=prefix, l1_ttl=600, **shape)
    async with full_stack(settings) as (app, state):
        yield app, state, settings


@pytest.fixture
def layers(
    service: tuple[ASGIApp, dict[str, Any], Settings],
) -> tuple[ASGIApp, HitPath, Recorder, dict[str, Any]]:
    """The full stack; the hit path in front of it (noting what reaches the stack); state."""
    full, state, settings = service
    behind = Recorder(full)
    fast = HitPath(
        behind,
        encodings=settings.compression_encodings,
        read_headers=state["read_headers"],
        levels=settings.compression_levels,
        minimum_size=settings.compression_min_size,
        stats=state["compression"],
    )
    return full, fast, behind, state


async def test_the_hit_path_sends_exactly_what_the_full_stack_sends(
    layers: tuple[ASGIApp, HitPath, Recorder, dict[str, Any]],
) -> None:
    full, fast, behind, state = layers
    ids = {name: f"diff-{name}-{unique_prefix()}" for name in ("big", "small", "deleted")}
    results = state["result_cache"]
    await results.put(ids["big"], BIG)
    await results.put(ids["small"], SMALL)
    await results.put(ids["deleted"], SMALL)
    await results.delete(ids["deleted"])
    missing = f"/results/missing-{unique_prefix()}"
    await exchange(full, state, "GET", missing, [])
    await next_second()  # from here on every response carries Last-Modified
    for rid in ids.values():  # L1 filled (if any): each read from here on is answered alike
        await exchange(full, state, "GET", f"/results/{rid}", [])

    first = await exchange(full, state, "GET", f"/results/{ids['big']}", [])
    modified = dict((k.decode(), v.decode()) for k, v in first[0]["headers"])["last-modified"]
    moment = datetime.strptime(modified, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)

    def date(delta: int) -> str:
        return format_datetime(moment + timedelta(seconds=delta), usegmt=True)

    conditionals: list[Headers] = [
        [],
        [("if-none-match", '"1"')],
        [("if-none-match", 'W/"1"')],
        [("if-none-match", '"1-gzip"')],
        [("if-none-match", '"1-br"')],
        [("if-none-match", '"1-zstd"')],
        [("if-none-match", 'W/"1-zstd"')],
        [("if-none-match", '"0", "1-br", "1-gzip"')],
        [("if-none-match", '"2"')],
        [("if-none-match", "*")],
        [("if-none-match", "")],
        [("if-none-match", '"1"'), ("if-none-match", '"1-br"')],
        [("if-modified-since", date(0))],
        [("if-modified-since", date(1))],
        [("if-modified-since", date(-1))],
        [("if-modified-since", "yesterday")],
        [("if-modified-since", "Sat, 99999999999999 Nov 2026 00:00:00 GMT")],
        [("if-modified-since", "Sat, 28 Nov 99999999999999 00:00:00 GMT")],
        [("if-modified-since", f"Sat, 28 Nov {'9' * 4301} 00:00:00 GMT")],
        [("if-none-match", '"01"')],
        [("if-none-match", '"+1", "01-br", W/"001-gzip"')],
        [("if-match", f'"{"9" * 4301}"')],
        [("if-modified-since", date(5)), ("if-none-match", '"2"')],
        [("if-match", '"1"')],
        [("if-unmodified-since", date(0))],
        [("range", "bytes=0-9")],
        [("if-range", '"1"'), ("range", "bytes=0-9")],
        [("cache-control", "no-transform")],
        [("cache-control", "max-age=0")],
    ]
    paths = [
        *(f"/results/{ids[name]}" for name in ("big", "small", "deleted")),
        missing,
        "/results/a\nb",
        "/results/\r\n",
        "/results/a/b",
        "/results/",
        "/results/" + "x" * 129,
    ]
    compared = answered = 0
    for path, method, accept, conditional in itertools.product(
        paths, ("GET", "HEAD"), ACCEPTS, conditionals
    ):
        headers = [*([("accept-encoding", accept)] if accept is not None else []), *conditional]
        expected = await exchange(full, state, method, path, headers)
        calls = behind.calls
        got = await exchange(fast, state, method, path, headers)
        answered += behind.calls == calls
        assert got == expected, (method, path, headers)
        compared += 1
    assert compared == len(paths) * 2 * len(ACCEPTS) * len(conditionals)
    assert answered > 500, "the hit path must really answer the plain reads"


async def test_the_hit_path_answers_reads_and_leaves_the_rest_alone(
    layers: tuple[ASGIApp, HitPath, Recorder, dict[str, Any]],
) -> None:
    _, fast, behind, state = layers
    results = state["result_cache"]
    rid = f"hits-{unique_prefix()}"
    await results.put(rid, BIG)
    path = f"/results/{rid}"

    async def reaches_the_stack(method: str, headers: Headers, target: str = path) -> bool:
        calls = behind.calls
        await exchange(fast, state, method, target, headers)
        return behind.calls > calls

    def reads() -> int:
        """Reads through the cache so far, whichever tier answered."""
        stats = results.stats()
        total: int = stats.l1_hits + stats.shared_hits + stats.loads + stats.stale
        return total

    assert not await reaches_the_stack("GET", [])  # a miss is read, as the route reads it
    assert not await reaches_the_stack("GET", [])
    assert not await reaches_the_stack("HEAD", [])
    assert not await reaches_the_stack("GET", [("accept-encoding", "br")])  # made here
    assert not await reaches_the_stack("GET", [("accept-encoding", "br")])
    assert not await reaches_the_stack("GET", [("if-none-match", '"1"')])
    for odd in (
        [("range", "bytes=0-1")],
        [("if-match", '"1"')],
        [("if-range", '"1"')],
        [("if-unmodified-since", "Sat, 28 Nov 2026 00:00:00 GMT")],
        [("cache-control", "no-transform")],
        [("if-none-match", '"1"'), ("if-none-match", '"2"')],
    ):
        assert await reaches_the_stack("GET", odd), odd
    assert await reaches_the_stack("PUT", [])
    assert await reaches_the_stack("GET", [], "/results/a/b")  # the route's 422
    before = reads()
    assert await reaches_the_stack("GET", [], f"/results/missing-{unique_prefix()}")
    assert reads() == before + 1, "the route answers the 404 from the hit path's read"
    await results.put(rid, SMALL)  # a write drops the L1 entry at once
    answer = await exchange(fast, state, "GET", path, [])
    assert answer[1]["body"] == SMALL
    if results.l1 is not None:
        assert results.stats().l1_hits >= 4


async def test_middleware_that_edits_headers_in_place_cannot_corrupt_later_hits(
    service: tuple[ASGIApp, dict[str, Any], Settings],
) -> None:
    """Starlette's GZipMiddleware rewrites ``message["headers"]`` in place: each response
    must carry its own copy of the ready header block."""
    full, state, settings = service
    # As a user who prefers GZipMiddleware would run it: no codings of our own.
    state = {**state, "settings": dataclasses.replace(settings, compression_encodings=())}
    fast = HitPath(
        full, encodings=(), read_headers=state["read_headers"], stats=state["compression"]
    )
    wrapped = GZipMiddleware(fast, minimum_size=10)
    rid = f"gzip-{unique_prefix()}"
    await state["result_cache"].put(rid, BIG)
    path = f"/results/{rid}"
    stored = await state["store"].get(rid)
    assert stored is not None
    for _ in range(3):
        zipped = await exchange(wrapped, state, "GET", path, [("accept-encoding", "gzip")])
        assert gzip.decompress(zipped[1]["body"]) == stored.body
    for method in ("GET", "HEAD"):
        plain = await exchange(fast, state, method, path, [])
        headers = dict(plain[0]["headers"])
        assert b"content-encoding" not in headers
        assert headers[b"content-length"] == str(len(stored.body)).encode()
        assert plain[1]["body"] == (stored.body if method == "GET" else b"")
