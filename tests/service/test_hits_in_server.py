"""The HTTP server's own answer to an L1 hit is indistinguishable from the app's.

``service serve`` runs :class:`GuardedHttpToolsProtocol`, which answers a plain read
whose representation L1 holds ready by itself, with no ASGI task, scope or message. Two
real servers run the same service: one with that protocol, one with the same protocol
told never to answer by itself. One matrix of raw HTTP requests (methods, codings,
conditionals, Range, HTTP/1.0, ``Connection: close``, a body, escapes, a query, pipelined
batches) goes to both, and every response must be the same bytes, the Date line aside.
The protocol must also really answer the plain reads.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.api.reads import HitPath
from service.app import create_app
from service.config import Settings
from service.server import GuardedHttpToolsProtocol
from tests.api.test_hit_path import ACCEPTS, BIG, SMALL
from tests.helpers import next_second, serving, unique_prefix

DATE = re.compile(rb"\r\ndate: [^\r]*\r\n")


class WithoutAccessLog(GuardedHttpToolsProtocol):
    """As ``service serve`` runs it without ``--access-log``. uvicorn takes any handler
    on its access logger for an access log, and pytest's log capture puts one there;
    the protocol leaves every request to the app when there is an access log to write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False


class Answering(WithoutAccessLog):
    """The protocol as ``service serve`` runs it, counting what it answered itself."""

    answered = 0

    def _answer_at_once(self, hits: HitPath) -> bool:
        done = super()._answer_at_once(hits)
        Answering.answered += done
        return done


class NeverAnswering(WithoutAccessLog):
    """The same protocol, leaving every request to the app (its hit path included)."""

    def _answer_at_once(self, hits: HitPath) -> bool:
        return False


@pytest.fixture
async def servers(pg_url: str, redis_url: str, prefix: str) -> AsyncIterator[tuple[str, str]]:
    """The service behind each protocol, on one database and one Redis prefix."""
    settings = Settings(database_url=pg_url, redis_url=redis_url, cache_prefix=prefix, l1_ttl=600)
    options: dict[str, Any] = {"lifespan": "on", "server_header": False}
    async with (
        serving(create_app(settings), http=Answering, **options) as fast,
        serving(create_app(settings), http=NeverAnswering, **options) as usual,
    ):
        yield fast, usual


async def read_answer(reader: asyncio.StreamReader, method: bytes) -> bytes:
    """One response as received: its head, then its body (by Content-Length, chunks, or
    to the end of the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = dict(line.split(b": ", 1) for line in lines[1:] if line)
    if method == b"HEAD" or status in (204, 304):
        return head
    if b"content-length" in fields:
        return head + await reader.readexactly(int(fields[b"content-length"]))
    if fields.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            chunk = await reader.readexactly(int(size_line, 16) + 2)
            body += size_line + chunk
            if int(size_line, 16) == 0:
                return head + body
    return head + await reader.read()


async def exchange(url: str, requests: list[bytes]) -> list[bytes]:
    """Send ``requests`` in one write on one connection; every answer, Date masked."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        answers = []
        for request in requests:
            answer = await read_answer(reader, request.split(b" ", 1)[0])
            answers.append(DATE.sub(b"\r\ndate: -\r\n", answer))
        return answers
    finally:
        writer.close()


def request(
    method: str, target: str, headers: list[tuple[str, str]], version: str = "1.1"
) -> bytes:
    lines = [
        f"{method} {target} HTTP/{version}",
        "Host: service",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def test_the_server_answers_hits_with_exactly_what_the_app_sends(
    servers: tuple[str, str],
) -> None:
    fast, usual = servers
    ids = {name: f"srv-{name}-{unique_prefix()}" for name in ("big", "small", "deleted")}
    async with httpx.AsyncClient(base_url=fast) as client:
        for name, body in (("big", BIG), ("small", SMALL), ("deleted", SMALL)):
            response = await client.put(
                f"/results/{ids[name]}", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 201, response.text
        assert (await client.delete(f"/results/{ids['deleted']}")).status_code == 204
    targets = [
        *(f"/results/{rid}" for rid in ids.values()),
        f"/results/{ids['big']}?x=1",
        "/results/%73rv-" + ids["big"].removeprefix("srv-"),
        f"/results/missing-{unique_prefix()}",
        "/results/",
        "/results/" + "x" * 129,
        "/healthz",
    ]
    for url in (fast, usual):  # L1 filled, in every coding, on both sides
        warm = [
            request("GET", target, [("accept-encoding", a or "")])
            for target in targets
            for a in ACCEPTS
        ]
        await exchange(url, warm * 2)

    await next_second()  # from here on every answer carries Last-Modified, on both sides
    conditionals: list[list[tuple[str, str]]] = [
        [],
        [("if-none-match", '"1"')],
        [("if-none-match", 'W/"1-zstd"')],
        [("if-none-match", '"1-br", "1-gzip"')],
        [("if-none-match", "*")],
        [("if-modified-since", "Sun, 29 Nov 2099 00:00:00 GMT")],
        [("if-modified-since", "Sun, 29 Nov 2000 00:00:00 GMT")],
        [("range", "bytes=0-9")],
        [("cache-control", "no-transform")],
        [("connection", "close")],
        [("content-length", "0")],
        [("expect", "100-continue")],
    ]
    singles = [
        request(
            method, target, [*(() if accept is None else [("accept-encoding", accept)]), *extra]
        )
        for method, target, accept, extra in itertools.product(
            ("GET", "HEAD"), targets, ACCEPTS, conditionals
        )
    ]
    singles += [request("GET", target, [], version="1.0") for target in targets]
    before = Answering.answered
    for single in singles:  # one connection each: some close it
        assert await exchange(fast, [single]) == await exchange(usual, [single]), single
    # Keep-alive and pipelining: reads answered at once between ones that are not.
    keep_alive = [s for s in singles if b"connection: close" not in s and b"HTTP/1.0" not in s]
    for start in range(0, len(keep_alive), 40):
        batch = keep_alive[start : start + 40]
        assert await exchange(fast, batch) == await exchange(usual, batch)
    answered = Answering.answered - before
    assert answered > 500, "the server must really answer the plain reads"
