"""What the tests share: the servers under test, ids, throw-away databases, Redis prefixes,
problem answers, metric scrapes, and ASGI exchanges for the compression middleware.

Test modules import from here (never from ``conftest.py`` or from another test module);
``tests/conftest.py`` holds the fixtures and pytest hooks and imports from here too.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import brotli
import httpx
import uvicorn
import zstandard
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.cache.backends import RedisBackend
from service.cache.result_cache import ResultCache
from service.db.migrations import upgrade
from service.db.optimization import ADVISORY_LOCK_KEY
from service.db.pool import ConnectionPool

# --- the servers under test ---------------------------------------------------------------

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
"""A libpq DSN of the PostgreSQL server the tests create their databases on."""
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The shared Redis; every test keeps its keys under a prefix of its own and removes them."""


# --- ids and ports ------------------------------------------------------------------------


def unique_id(prefix: str = "t") -> str:
    """An analysis id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def next_second() -> None:
    """Wait for the current second to end: a version written before is then sent with
    Last-Modified (never during the second it was written in)."""
    now = time.time()
    await asyncio.sleep(int(now) + 1 - now + 0.01)


async def read_until_l1_holds(cache: ResultCache, analysis_id: str, within: float = 1.0) -> None:
    """Read ``analysis_id`` until ``cache`` serves it from its L1.

    A write made by another replica reaches this one as a notice that names the id, not
    the version. When the notice arrives after a read has already kept the new version,
    it drops that entry too, and the next read keeps it again. So "the reader's L1 holds
    it" is a state to wait for, not one the read right after a write guarantees."""
    started = time.perf_counter()
    while (await cache.get(analysis_id)).source != "l1":
        assert time.perf_counter() - started < within, f"L1 never kept {analysis_id}"
        await asyncio.sleep(0.001)


def unique_prefix(tag: str = "rc") -> str:
    """A cache prefix (CACHE_PREFIX) no other test uses; see :func:`forget_prefix`."""
    return f"{tag}{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


closed_port = free_port
"""A loopback port with nothing listening on it: connecting there is refused."""


# --- PostgreSQL databases of a test's own -------------------------------------------------


@asynccontextmanager
async def fresh_database(prefix: str, admin_dsn: str = ADMIN_URL) -> AsyncIterator[str]:
    """``CREATE DATABASE <prefix>_<random>`` on the server of ``admin_dsn``; yields its
    libpq DSN (for asyncpg); ``DROP DATABASE ... WITH (FORCE)`` afterwards, also on failure."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{admin_dsn.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def service_url(dsn: str) -> str:
    """The SQLAlchemy URL (asyncpg driver) of a libpq DSN.

    With TEST_PGBOUNCER_PORT set (``tests/db/test_pgbouncer.py`` runs suites that way), a
    database on the TEST_POSTGRES_URL server is reached through the PgBouncer on that
    port, in transaction mode (``?pgbouncer=true``); the tests' own side connections
    (``Database.connect``) still go straight to the server.
    """
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    bouncer = os.environ.get("TEST_PGBOUNCER_PORT")
    server = urlsplit(ADMIN_URL)
    parts = urlsplit(url)
    if not bouncer or (parts.hostname, parts.port) != (server.hostname, server.port or 5432):
        return url
    netloc = parts.netloc.rsplit("@", 1)
    auth = f"{netloc[0]}@" if len(netloc) == 2 else ""
    query = f"{parts.query}&pgbouncer=true" if parts.query else "pgbouncer=true"
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{bouncer}", query=query))


def side_dsn(url: str) -> str:
    """The libpq DSN of a service URL's database, straight to its server (never through
    the PgBouncer that :func:`service_url` may put in between): for a test's own
    connections that look at, lock or kill what the service does."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    if "pgbouncer=true" not in parts.query:
        return urlunsplit(parts)
    server = urlsplit(ADMIN_URL)
    netloc = parts.netloc.rsplit("@", 1)
    auth = f"{netloc[0]}@" if len(netloc) == 2 else ""
    query = "&".join(p for p in parts.query.split("&") if p != "pgbouncer=true")
    return urlunsplit(parts._replace(netloc=auth + server.netloc.rsplit("@", 1)[-1], query=query))


@dataclass(frozen=True, slots=True)
class Database:
    """A throw-away PostgreSQL database: ``dsn`` for asyncpg, ``url`` for the service."""

    name: str
    dsn: str

    @property
    def url(self) -> str:
        """For the service (``DATABASE_URL``, ConnectionPool)."""
        return service_url(self.dsn)

    async def connect(self) -> Any:
        """A connection of its own (asyncpg), to look at the database from the side."""
        return await asyncpg.connect(self.dsn)

    async def execute(self, sql: str) -> None:
        conn = await self.connect()
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await self.connect()
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


@asynccontextmanager
async def scratch_database(
    prefix: str, admin_dsn: str = ADMIN_URL, *, migrated: bool = False
) -> AsyncIterator[Database]:
    """A :class:`Database` of its own (``<prefix>_<random>``, see :func:`fresh_database`),
    with the service's schema if ``migrated``; dropped afterwards."""
    async with fresh_database(prefix, admin_dsn) as dsn:
        db = Database(dsn.rsplit("/", 1)[1], dsn)
        if migrated:
            async with ConnectionPool(db.url) as pool:
                await upgrade(pool)
        yield db


# --- maintenance, as PostgreSQL records it ------------------------------------------------

STATS_TIMEOUT = 5.0
"""Seconds to wait for PostgreSQL to show a statistic, a waiting backend, ..."""

Column = Literal["last_vacuum", "last_analyze"]
HOSTILE = 'x"; DROP TABLE y; --'
"""A table name that would drop table y if it were pasted into SQL."""


async def stat(db: Database, table: str, column: Column) -> datetime | None:
    """``pg_stat_all_tables.<column>`` of ``table`` (schema-qualified) right now."""
    value: datetime | None = await db.fetchval(
        f"SELECT {column} FROM pg_stat_all_tables WHERE relid = to_regclass($1)", table
    )
    return value


async def wait_for_stat(db: Database, table: str, column: Column) -> datetime:
    """Poll until PostgreSQL records ``column`` of ``table``; fail after STATS_TIMEOUT."""
    deadline = time.monotonic() + STATS_TIMEOUT
    while (value := await stat(db, table, column)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{column} of {table} still NULL after {STATS_TIMEOUT} s")
        await asyncio.sleep(0.05)
    return value


@asynccontextmanager
async def advisory_lock_held(db: Database) -> AsyncIterator[Any]:
    """Another session holds the maintenance advisory lock (as another replica would).

    Yields a coroutine function that releases it early; otherwise released on exit.
    """
    conn = await db.connect()
    held = True

    async def release() -> None:
        nonlocal held
        if held:
            assert await conn.fetchval("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
            held = False

    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        yield release
    finally:
        await release()
        await conn.close()


async def advisory_lock_is_free(db: Database) -> bool:
    """Whether another session can take the maintenance lock now (given back at once)."""
    conn = await db.connect()
    try:
        got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY))
        if got:
            await conn.fetchval("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
        return got
    finally:
        await conn.close()


# --- Redis --------------------------------------------------------------------------------


class RawRedis:
    """The test Redis (TEST_REDIS_URL, a cluster too) looked at from the side: raw
    commands on keys named as the cache names them (on a cluster, behind their
    bucket's hash tag)."""

    def __init__(self, url: str = REDIS_URL) -> None:
        self.backend = RedisBackend(url, socket_timeout=5)
        self.client: Any = self.backend.client

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.client.get(self.backend.stored_key(key))
        return value

    async def set(self, key: str, value: bytes) -> None:
        await self.client.set(self.backend.stored_key(key), value)

    async def pttl(self, key: str) -> int:
        return int(await self.client.pttl(self.backend.stored_key(key)))

    async def ttl(self, key: str) -> int:
        return int(await self.client.ttl(self.backend.stored_key(key)))

    async def memory_usage(self, key: str) -> int:
        used = await self.client.memory_usage(self.backend.stored_key(key), samples=0)
        assert used is not None, f"no key {key}"
        return int(used)

    async def aclose(self) -> None:
        await self.backend.aclose()


@asynccontextmanager
async def raw_redis(url: str = REDIS_URL) -> AsyncIterator[RawRedis]:
    """A :class:`RawRedis`, closed afterwards."""
    raw = RawRedis(url)
    try:
        yield raw
    finally:
        await raw.aclose()


async def forget_prefix(prefix: str) -> None:
    """Remove every key a test made under ``prefix`` on the shared Redis (or the cluster
    TEST_REDIS_URL names)."""
    backend = RedisBackend(REDIS_URL, socket_timeout=5)
    try:
        await backend.delete_prefix(f"{prefix}:")
    finally:
        await backend.aclose()


# --- HTTP ---------------------------------------------------------------------------------

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
"""The ``make_client`` fixture: ``async with make_client(**settings) as client``."""

PROBLEM = "application/problem+json"


def assert_problem(
    response: httpx.Response, status: int, slug: str | None = None
) -> dict[str, Any]:
    """A problem+json answer (RFC 9457) of ``status``, of type ``/problems/<slug>`` when
    ``slug`` is given; its body (empty for a HEAD, whose answer has none)."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == PROBLEM
    if response.request.method == "HEAD":
        return {}
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["title"]
    assert body["detail"]
    if slug is not None:
        assert body["type"] == f"/problems/{slug}", body
    return body


# --- metric scrapes -----------------------------------------------------------------------

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Samples:
    """Every sample of a text-format scrape, keyed by name and label set."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        name, raw_labels, value = match.groups()
        labels = frozenset(_LABEL.findall(raw_labels or ""))
        key = (name, labels)
        assert key not in samples, f"duplicate series: {line!r}"
        samples[key] = float(value)
    return samples


def get_or_zero(samples: Samples, name: str, /, **labels: str) -> float:
    """The value of the series ``name{labels}`` (exactly those labels); 0 when the series
    does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- ASGI exchanges: bodies, decoders, apps, a raw call, a real server --------------------
# (for the compression middleware, which is tested message by message)

MIN = 500
"""The compression middleware's default ``minimum_size``."""
ALL = "zstd, br, gzip"
"""An Accept-Encoding that accepts every coding (the server's order then decides)."""
VARY = ("vary", "Accept-Encoding")
Headers = list[tuple[str, str]]


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
async def serving(
    app: ASGIApp, *, lifespan: Literal["on", "off"] = "off", **options: Any
) -> AsyncIterator[str]:
    """``app`` behind a real uvicorn on a free loopback port, in this event loop;
    ``options`` go to ``uvicorn.Config`` (``http=`` a protocol class, say)."""
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
        **options,
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
