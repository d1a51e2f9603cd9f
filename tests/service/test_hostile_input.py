"""Whatever a client sends, the answer is a 4xx problem, never a 5xx, an ERROR or a traceback.

Each test replays what an external tester found against the running service: a body
cut short, giant numbers in headers and the query, non-canonical entity tags, control
characters in the id, a megabyte of header echoed back, HEAD and GET disagreeing on
Content-Length, a graceful shutdown's cancellations, a readiness probe during an
outage, a body trickled in forever. On the real PostgreSQL and Redis; the tests that
need a socket run uvicorn in a thread (``log_config=None``, so its records reach
``caplog`` like ours), the others run the app in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.types import Message

from service.api import health
from service.app import create_app
from service.config import Settings
from service.logs import RateLimitedLog, ShutdownCancellations, quiet_shutdown_cancellations
from tests.helpers import (
    PROBLEM,
    ClientFactory,
    assert_problem,
    forget_prefix,
    free_port,
    get_or_zero,
    parse,
    side_dsn,
    unique_id,
    unique_prefix,
)
from tests.support.asgi import request_scope

JSON = {"content-type": "application/json"}
IDENTITY = {"accept-encoding": "identity"}
BIG_NUMBER = "9" * 4301
"""One digit past Python's int() conversion limit: int() raised ValueError, a 500."""
MAX_BIGINT = 2**63 - 1
DOCUMENT = {"rows": [{"id": n, "label": f"segment-{n % 17}"} for n in range(200)]}
"""Large enough (well over COMPRESSION_MIN_SIZE) to be compressed."""
RESULT_ENDPOINT = "/results/{analysis_id}"


# --- helpers ---------------------------------------------------------------------------


def put_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a PUT to ``path``, for tests that script the body's messages."""
    return request_scope("PUT", path, headers)


def assert_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing at ERROR or above, and no traceback at any level."""
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]


@pytest.fixture
async def settings(pg_url: str, redis_url: str) -> AsyncIterator[Settings]:
    """Settings on the test database and the shared Redis, under a prefix of their own."""
    prefix = unique_prefix()
    yield Settings(database_url=pg_url, redis_url=redis_url, cache_prefix=prefix)
    await forget_prefix(prefix)


@asynccontextmanager
async def in_process(
    settings: Settings, *, monitoring: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """An httpx client on ``create_app(settings)``, started; and the app."""
    app = create_app(settings, monitoring=monitoring)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client, manager.app


@asynccontextmanager
async def serving(settings: Settings, *, graceful: int | None = None) -> AsyncIterator[Any]:
    """uvicorn (httptools, as ``service serve`` runs it) in a thread on a free port.

    Yields the :class:`uvicorn.Server`; its port is ``server.config.port``. On the way
    out the server is told to exit (a graceful shutdown) and its thread joined.
    """
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=free_port(),
        http="httptools",
        # Not uvloop: build_info's labels are read once per process, from the loop of
        # the first scrape, and the other tests scrape under the plain asyncio loop.
        loop="asyncio",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="hostile-input-server", daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(20):
            while not server.started:
                assert thread.is_alive(), "the server thread died during start-up"
                await asyncio.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 20)
        assert not thread.is_alive(), "the server did not stop"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def put_head(
    port: int, analysis_id: str, length: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send a PUT's header block announcing ``length`` bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"PUT /results/%s HTTP/1.1\r\nHost: service\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (analysis_id.encode(), length)
    )
    await writer.drain()
    return reader, writer


# --- 1. a client gone mid-body ------------------------------------------------------------


async def test_a_client_gone_mid_body_is_a_4xx_in_the_metrics_and_no_error(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Content-Length: 10000, 100 bytes, then the connection closes: Starlette raises
    ClientDisconnect. It was a 500 in the metrics and two ERROR tracebacks."""
    caplog.set_level(logging.INFO)
    async with asyncio.timeout(40), serving(settings) as server:
        port = server.config.port
        _, writer = await put_head(port, unique_id("gone"), 10_000)
        writer.write(b'{"partial": "' + b"x" * 87)
        await writer.drain()
        await asyncio.sleep(0.2)  # the route is reading the body by now
        writer.close()
        await writer.wait_closed()

        labels = {"method": "PUT", "endpoint": RESULT_ENDPOINT}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while True:  # the server notices the close asynchronously
                scrape = parse((await client.get("/metrics")).text)
                if get_or_zero(scrape, "responses_total", **labels, status_class="4xx"):
                    break
                await asyncio.sleep(0.05)
        assert get_or_zero(scrape, "responses_total", **labels, status_class="4xx") == 1
        assert get_or_zero(scrape, "responses_total", **labels, status_class="5xx") == 0
    assert_no_errors(caplog)


async def test_a_client_gone_mid_body_is_answered_499_in_process(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The ASGI messages themselves: http.disconnect after 100 of 10,000 bytes."""
    incoming: list[Message] = [
        {"type": "http.request", "body": b" " * 100, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    async with in_process(settings) as (_, app):
        scope = put_scope(
            f"/results/{unique_id('gone')}",
            [(b"content-type", b"application/json"), (b"content-length", b"10000")],
        )
        await app(scope, receive, send)
    assert sent[0]["status"] == 499
    assert (b"content-type", PROBLEM.encode()) in sent[0]["headers"]
    assert b"/problems/client-closed-request" in sent[1]["body"]
    assert_no_errors(caplog)


# --- 2. giant numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "since",
    [
        "Sun, 99999999999999 Nov 2026 00:00:00 GMT",
        "Sun, 01 Nov 99999999999999 00:00:00 GMT",
        "Sun, 01 Nov 10000 00:00:00 GMT",
        "Sun, 01 Nov 2026 99999999999999:00:00 GMT",
        "Sun, 01 Nov 2026 00:00:00 +99999999999999",
        f"Sun, 01 Nov {BIG_NUMBER} 00:00:00 GMT",
        f"Sun, {BIG_NUMBER[:60]} Nov 2026 00:00:00 GMT",
    ],
)
async def test_an_if_modified_since_that_cannot_be_parsed_is_ignored(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, since: str
) -> None:
    """RFC 9110 section 13.1.3: an invalid date is ignored, so the answer is a 200."""
    rid = unique_id("since")
    assert (await client.put(f"/results/{rid}", json=DOCUMENT)).status_code == 201
    for path in (f"/results/{rid}", "/openapi.json", "/healthz"):
        for method in ("GET", "HEAD"):
            response = await client.request(method, path, headers={"if-modified-since": since})
            assert response.status_code == 200, (method, path, response.text[:200])
    assert_no_errors(caplog)


@pytest.mark.parametrize(
    "tag", [BIG_NUMBER, str(MAX_BIGINT + 1), "1" + "0" * 19, "18446744073709551616"]
)
async def test_an_if_match_past_the_largest_version_is_412(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, tag: str
) -> None:
    rid = unique_id("huge")
    await client.put(f"/results/{rid}", json={"a": 1})
    condition = {"if-match": f'"{tag}"'}
    put = await client.put(f"/results/{rid}", json={"a": 2}, headers=condition)
    assert_problem(put, 412, "precondition-failed")
    assert_problem(await client.delete(f"/results/{rid}", headers=condition), 412)
    absent = await client.put(f"/results/{unique_id('absent')}", json={}, headers=condition)
    assert_problem(absent, 412)
    assert (await client.get(f"/results/{rid}")).json() == {"a": 1}
    assert_no_errors(caplog)


async def test_the_largest_bigint_is_a_version_that_is_not_there(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """9223372036854775807 still reaches the database (a valid BIGINT): 412, not 500."""
    rid = unique_id("max")
    await client.put(f"/results/{rid}", json={"a": 1})
    condition = {"if-match": f'"{MAX_BIGINT}"'}
    put = await client.put(f"/results/{rid}", json={"a": 2}, headers=condition)
    assert_problem(put, 412, "precondition-failed")
    assert_problem(await client.delete(f"/results/{rid}", headers=condition), 412)
    assert_no_errors(caplog)


@pytest.mark.parametrize("limit", [BIG_NUMBER, "0" * 5000 + "1001", "0", "-1", "1e3", "²"])
async def test_a_limit_out_of_range_is_422(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, limit: str
) -> None:
    response = await client.get("/results", params={"limit": limit})
    assert_problem(response, 422, "invalid-parameter")
    assert_no_errors(caplog)


async def test_a_limit_with_leading_zeros_is_still_a_limit(client: httpx.AsyncClient) -> None:
    response = await client.get("/results", params={"limit": "0" * 5000 + "2"})
    assert response.status_code == 200
    assert len(response.json()["items"]) <= 2


@pytest.mark.parametrize(("length", "status"), [(BIG_NUMBER, 413), ("1" * 30, 413), ("²", 400)])
async def test_a_giant_or_odd_content_length_is_a_4xx(
    settings: Settings, caplog: pytest.LogCaptureFixture, length: str, status: int
) -> None:
    """int() of a 4,301-digit Content-Length raised ValueError; "²" passes isdigit()."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async with in_process(settings) as (_, app):
        scope = put_scope(
            f"/results/{unique_id('length')}",
            [
                (b"content-type", b"application/json"),
                (b"content-length", length.encode("latin-1")),
            ],
        )
        await app(scope, receive, send)
    assert sent[0]["status"] == status
    assert (b"content-type", PROBLEM.encode()) in sent[0]["headers"]
    assert_no_errors(caplog)


# --- 3. strong comparison ------------------------------------------------------------------


@pytest.mark.parametrize("tag", ['"01"', '"0001"', '"+1"', '" 1"', '"1 "', 'W/"1"', '"1.0"', "1"])
async def test_if_match_compares_tags_strongly(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, tag: str
) -> None:
    """ETag "1" is matched by "1" alone: "0001" names no version (RFC 9110 8.8.3.2)."""
    rid = unique_id("strong")
    await client.put(f"/results/{rid}", json={"a": 1})
    put = await client.put(f"/results/{rid}", json={"a": 2}, headers={"if-match": tag})
    assert_problem(put, 412, "precondition-failed")
    assert_problem(await client.delete(f"/results/{rid}", headers={"if-match": tag}), 412)
    got = await client.get(f"/results/{rid}")
    assert got.json() == {"a": 1}
    assert got.headers["etag"] == '"1"'
    exact = await client.put(f"/results/{rid}", json={"a": 3}, headers={"if-match": '"1"'})
    assert exact.status_code == 200
    assert_no_errors(caplog)


@pytest.mark.parametrize("tag", ['"01"', '"+1"', '"1 "'])
async def test_if_none_match_with_a_non_canonical_tag_is_not_a_304(
    client: httpx.AsyncClient, tag: str
) -> None:
    rid = unique_id("none")
    await client.put(f"/results/{rid}", json=DOCUMENT)
    for accept in ("identity", "gzip"):
        headers = {"if-none-match": tag, "accept-encoding": accept}
        assert (await client.get(f"/results/{rid}", headers=headers)).status_code == 200
    assert (
        await client.get(f"/results/{rid}", headers={"if-none-match": '"1"', **IDENTITY})
    ).status_code == 304


# --- 4. control characters in the id -------------------------------------------------------


@pytest.mark.parametrize("character", ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\r\n"])
async def test_a_control_character_in_the_id_is_422(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, character: str
) -> None:
    """``%0A`` was a 404: Starlette's path convertor (``.*``) stops at a newline."""
    for path in (f"/results/a{quote(character)}b", f"/results/{quote(character)}"):
        for method in ("GET", "HEAD", "DELETE"):
            response = await client.request(method, path)
            assert_problem(response, 422, "invalid-analysis-id")
        put = await client.put(path, json={"a": 1})
        assert_problem(put, 422, "invalid-analysis-id")
    assert_no_errors(caplog)


# --- 5. client text in problem details is capped ------------------------------------------


async def test_client_text_quoted_in_a_problem_is_capped(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1 MB If-Match came back in a 1 MB 412."""
    rid = unique_id("echo")
    await client.put(f"/results/{rid}", json={"a": 1})
    megabyte = "7" * (1 << 20)
    answers = [
        await client.put(f"/results/{rid}", json={"a": 2}, headers={"if-match": f'"{megabyte}"'}),
        await client.put(f"/results/{rid}", json={"a": 2}, headers={"if-match": megabyte}),
        await client.delete(f"/results/{rid}", headers={"if-match": f'W/"{megabyte}"'}),
        await client.put(
            f"/results/{rid}", content=b"{}", headers={"content-type": f"text/{megabyte}"}
        ),
        await client.get(f"/results/{'x' * 5000}"),
    ]
    for response, status in zip(answers, (412, 412, 412, 415, 422), strict=True):
        body = assert_problem(response, status)
        assert len(response.content) < 1024, (status, len(response.content))
        assert "7" * 65 not in body["detail"]
    assert "\u2026" in answers[0].json()["detail"]
    assert_no_errors(caplog)


# --- 6. HEAD sends the headers GET sends ---------------------------------------------------


async def test_head_sends_exactly_the_headers_get_sends(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Content-Length included, under every coding: it was missing on compressed HEADs.

    Without the monitoring layer, so /metrics renders the same body twice in a row
    (HEAD's own request would otherwise be counted in the GET after it).
    """
    async with in_process(settings, monitoring=False) as (client, _):
        rid = unique_id("head")
        assert (await client.put(f"/results/{rid}", json=DOCUMENT)).status_code == 201
        compared = 0
        for path in ("/openapi.json", "/metrics", f"/results/{rid}", "/healthz"):
            for coding in ("identity", "gzip", "br", "zstd"):
                headers = {"accept-encoding": coding}
                await client.get(path, headers=headers)  # warm: L1, representations
                head = await client.head(path, headers=headers)
                get = await client.get(path, headers=headers)
                assert head.status_code == get.status_code == 200
                assert _comparable(head) == _comparable(get), (path, coding)
                assert head.content == b""
                assert int(get.headers["content-length"]) == get.num_bytes_downloaded
                if path != "/healthz" and coding != "identity":
                    assert get.headers["content-encoding"] == coding, (path, coding)
                compared += 1
        assert compared == 16
    assert_no_errors(caplog)


async def test_head_and_get_agree_on_header_names_with_monitoring(settings: Settings) -> None:
    """With monitoring /metrics changes between two requests; the fields must not."""
    async with in_process(settings) as (client, _):
        for coding in ("identity", "gzip", "br", "zstd"):
            head = await client.head("/metrics", headers={"accept-encoding": coding})
            get = await client.get("/metrics", headers={"accept-encoding": coding})
            assert [k for k, _ in _comparable(head)] == [k for k, _ in _comparable(get)]


def _comparable(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in response.headers.multi_items() if k.lower() != "date"]


# --- 7. a graceful shutdown's cancellations ------------------------------------------------


async def test_a_request_cancelled_by_the_graceful_timeout_is_one_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A request still running ``timeout_graceful_shutdown`` seconds after the server
    was told to stop is cancelled: one WARNING line, a 503, no traceback, no ERROR."""
    caplog.set_level(logging.INFO)
    quiet_shutdown_cancellations()  # as configure_logging does in ``service serve``
    try:
        async with asyncio.timeout(40):
            async with serving(settings, graceful=1) as server:
                reader, writer = await put_head(server.config.port, unique_id("slow"), 1000)
                writer.write(b'{"slow": ')
                await writer.drain()
                await asyncio.sleep(0.3)  # in flight: reading the body
                server.should_exit = True
                started = time.monotonic()
            # serving() has joined the thread: the shutdown is over.
            assert time.monotonic() - started < 10
            status, headers, body = await read_response(reader)
            writer.close()
    finally:
        logger = logging.getLogger("uvicorn.error")
        for installed in [f for f in logger.filters if isinstance(f, ShutdownCancellations)]:
            logger.removeFilter(installed)
    assert status == 503
    assert headers["content-type"] == PROBLEM
    assert headers["connection"] == "close"
    assert b"/problems/shutting-down" in body
    cancelled = [r for r in caplog.records if "cancelled after" in r.getMessage()]
    assert len(cancelled) == 1, [r.getMessage() for r in cancelled]
    assert cancelled[0].levelno == logging.WARNING
    assert "/results/slow-" in cancelled[0].getMessage()
    told = [r for r in caplog.records if r.getMessage().startswith("Cancel 1 running task")]
    assert [r.levelname for r in told] == ["WARNING"]  # uvicorn's ERROR, demoted
    assert_no_errors(caplog)


async def test_a_read_cancelled_by_the_graceful_timeout_is_one_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for a read that waits on the database, which the hit path answers
    before the framework runs: its read waits on a table lock until the shutdown
    cancels it."""
    caplog.set_level(logging.INFO)
    quiet_shutdown_cancellations()
    locker = await asyncpg.connect(side_dsn(settings.database.render_as_string(False)))
    try:
        async with asyncio.timeout(40):
            async with serving(settings, graceful=1) as server:
                await locker.execute("BEGIN; LOCK TABLE results IN ACCESS EXCLUSIVE MODE")
                reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
                writer.write(
                    b"GET /results/%s HTTP/1.1\r\nHost: service\r\n\r\n"
                    % (unique_id("waits").encode())
                )
                await writer.drain()
                await asyncio.sleep(0.3)  # in flight: waiting for the lock
                server.should_exit = True
            status, headers, body = await read_response(reader)
            writer.close()
    finally:
        await locker.close()
        logger = logging.getLogger("uvicorn.error")
        for installed in [f for f in logger.filters if isinstance(f, ShutdownCancellations)]:
            logger.removeFilter(installed)
    assert status == 503
    assert headers["content-type"] == PROBLEM
    assert b"/problems/shutting-down" in body
    cancelled = [r for r in caplog.records if "cancelled after" in r.getMessage()]
    assert len(cancelled) == 1, [r.getMessage() for r in cancelled]
    assert cancelled[0].levelno == logging.WARNING
    assert "GET '/results/waits-" in cancelled[0].getMessage()
    assert_no_errors(caplog)


# --- 8. /readyz during an outage -----------------------------------------------------------


async def test_readyz_during_an_outage_logs_one_rate_limited_warning(
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every 503 of the probe logged a full traceback; other outage logs are one line a
    second, with the count of the suppressed ones."""
    monkeypatch.setattr(
        health, "_not_ready_warnings", RateLimitedLog(logging.getLogger(health.__name__), 60)
    )
    caplog.set_level(logging.INFO)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres"
    async with (
        asyncio.timeout(30),
        make_client(database_url=url, migrate_on_start=False, db_connect_timeout=1.0) as client,
    ):
        for _ in range(5):
            body = assert_problem(await client.get("/readyz"), 503, "not-ready")
            assert body["checks"]["database"] == "unavailable"
    lines = [r for r in caplog.records if r.name == health.__name__]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING
    assert "not ready" in lines[0].getMessage()
    assert_no_errors(caplog)


# --- body timeout ------------------------------------------------------------------------


async def _trickle(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """One byte every 50 ms until told to stop or the server closes the connection."""
    with_errors = (ConnectionError, OSError)
    try:
        while not stop.is_set():
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)
    except with_errors:
        pass


async def test_a_body_trickled_past_body_timeout_is_408_over_a_socket(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte every 50 ms keeps any per-read timeout happy: the total is what counts."""
    slow = dataclasses.replace(settings, body_timeout=0.5)
    async with asyncio.timeout(40), serving(slow) as server:
        reader, writer = await put_head(server.config.port, unique_id("trickle"), 10_000)
        stop = asyncio.Event()
        started = time.monotonic()
        trickling = asyncio.create_task(_trickle(writer, stop))
        try:
            status, headers, body = await read_response(reader)
            elapsed = time.monotonic() - started
            # Closed with the client's bytes still arriving, the connection may end in a
            # reset rather than an end of stream: either way, it is closed.
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b"", "the server must close"
        finally:
            stop.set()
            await trickling
            writer.close()
    assert status == 408
    assert headers["content-type"] == PROBLEM
    assert headers["connection"] == "close"
    assert b"/problems/request-timeout" in body
    assert 0.5 <= elapsed < 3, elapsed
    assert_no_errors(caplog)


async def test_a_body_trickled_past_body_timeout_is_408_in_process(
    make_client: ClientFactory, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" "
            await asyncio.sleep(0.05)

    async with asyncio.timeout(30), make_client(database_url=pg_url, body_timeout=0.5) as client:
        started = time.monotonic()
        response = await client.put(f"/results/{unique_id('slow')}", content=slowly(), headers=JSON)
        elapsed = time.monotonic() - started
        assert_problem(response, 408, "request-timeout")
        assert response.headers["connection"] == "close"
        assert 0.5 <= elapsed < 3, elapsed
        # A body that arrives in time is still read.
        fine = await client.put(f"/results/{unique_id('fine')}", json={"a": 1})
        assert fine.status_code == 201
    assert_no_errors(caplog)
