"""The real command line and uvicorn over TCP: start-up, exit codes, limits, shutdown, durability.

Every test here starts ``python -m service`` as a child process (see ``tests/support/server.py``),
talks to it over loopback TCP, and bounds itself with ``asyncio.timeout`` so a hung
server fails the test instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import orjson
import pytest

from tests.helpers import free_port, unique_id
from tests.support.server import rss_bytes, run_cli, running_service

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
GiB = 1024 * MiB


def asyncpg_dsn(url: str) -> str:
    """The SQLAlchemy URL of the test database as a DSN asyncpg accepts."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


# --- 1. no settings at all ---------------------------------------------------------------


async def test_serve_without_settings_uses_embedded_sqlite_under_home() -> None:
    async with asyncio.timeout(50), running_service({}) as server:
        expected = server.home / ".local" / "share" / "service" / "results.sqlite3"
        lines = [
            line for line in server.log().splitlines() if "embedded SQLite database at" in line
        ]
        assert lines, server.log()
        assert lines[0].endswith(str(expected)), lines

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            document = {"answer": 42, "nested": {"list": [1, 2.5, "three", None]}}
            put = await client.put("/results/first-run", json=document)
            assert put.status_code == 201, put.text
            assert put.json()["version"] == 1
            got = await client.get("/results/first-run")
            assert got.status_code == 200, got.text
            assert got.headers["content-type"].startswith("application/json")
            assert got.json() == document

        assert expected.is_file()
        assert expected.stat().st_size > 0


# --- 2. exit codes of the command line ---------------------------------------------------


async def test_malformed_number_setting_exits_2_naming_the_variable() -> None:
    status, out, err = await run_cli(
        "serve", "--port", str(free_port()), env={"DB_POOL_SIZE": "abc"}
    )
    assert status == 2, (out, err)
    assert "DB_POOL_SIZE" in err
    assert "Traceback" not in err + out


async def test_unsupported_database_url_exits_2_naming_the_variable() -> None:
    status, out, err = await run_cli(
        "serve", "--port", str(free_port()), env={"DATABASE_URL": "http://x"}
    )
    assert status == 2, (out, err)
    assert "DATABASE_URL" in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize("command", ["migrate", "serve"])
async def test_closed_database_port_exits_1_quickly_with_one_line(command: str) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres"
    started = time.perf_counter()
    env = {"DATABASE_URL": url, "DB_CONNECT_TIMEOUT": "2"}
    args = (command, "--port", str(free_port())) if command == "serve" else (command,)
    status, out, err = await run_cli(*args, env=env)
    elapsed = time.perf_counter() - started
    assert status == 1, (out, err)
    assert elapsed < 10, elapsed
    assert "Traceback" not in err + out
    # Log records (e.g. "database pool closed") may go to stderr too; the message for the
    # operator is one line of its own.
    messages = [line for line in err.splitlines() if line.startswith("service:")]
    assert len(messages) == 1, err
    assert "unavailable" in messages[0]


async def test_help_exits_0() -> None:
    status, out, err = await run_cli("--help")
    assert status == 0, err
    assert "serve" in out
    assert "migrate" in out


# --- 3. an oversize upload is refused before it is read ----------------------------------


@dataclass
class UploadOutcome:
    head: bytes
    """Status line and headers of the response."""
    body: bytes
    sent_before_response: int
    """Body bytes handed to the socket when the response's head arrived."""
    sent_total: int
    send_error: BaseException | None
    peak_rss: int


async def _oversize_upload(
    port: int, head: bytes, *, chunked: bool, limit: int = GiB, pid: int | None = None
) -> UploadOutcome:
    """Send ``head`` then up to ``limit`` body bytes, until the server answers or closes.

    A plain non-blocking socket rather than asyncio streams: the server answers 413 and
    closes while the upload is still coming, so the kernel resets the connection, and an
    asyncio transport that fails to write aborts and drops what it has not read yet. A
    socket keeps the response readable (it is queued before the reset) after a send fails.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    piece = b"0" * (64 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    sent = 0
    peak_rss = rss_bytes(pid) if pid is not None else 0
    send_error: BaseException | None = None

    async def send() -> None:
        nonlocal sent, peak_rss, send_error
        try:
            while sent < limit:
                await loop.sock_sendall(sock, frame)
                sent += len(piece)
                if pid is not None and sent % (4 * MiB) == 0:
                    peak_rss = max(peak_rss, rss_bytes(pid))
        except OSError as exc:  # the server closed the connection: stop sending
            send_error = exc

    async def receive() -> bytes:
        received = b""
        while True:
            head_end = received.find(b"\r\n\r\n")
            if head_end >= 0:
                _, headers = _status_and_headers(received[: head_end + 4])
                if len(received) >= head_end + 4 + int(headers.get("content-length", "0")):
                    return received
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except OSError as exc:
                raise AssertionError(
                    f"no complete response after {sent} bytes, got {received[:200]!r}"
                ) from exc
            if not chunk:
                raise AssertionError(
                    f"connection closed without a complete response after {sent} bytes, "
                    f"got {received[:200]!r} (send error: {send_error!r})"
                )
            if not received:
                sent_before_response.append(sent)
            received += chunk

    sent_before_response: list[int] = []
    sender: asyncio.Task[None] | None = None
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, head)
        sender = asyncio.create_task(send())
        response = await receive()
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        sock.close()
    if pid is not None:
        peak_rss = max(peak_rss, rss_bytes(pid))
    head_end = response.index(b"\r\n\r\n") + 4
    return UploadOutcome(
        response[:head_end],
        response[head_end:],
        sent_before_response[0],
        sent,
        send_error,
        peak_rss,
    )


def _status_and_headers(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def _assert_payload_too_large(outcome: UploadOutcome) -> None:
    status, headers = _status_and_headers(outcome.head)
    assert status == 413, outcome.head
    assert headers["content-type"] == "application/problem+json", headers
    problem = orjson.loads(outcome.body)
    assert problem["status"] == 413
    assert problem["type"] == "/problems/payload-too-large"
    assert problem["limit"] == MiB


async def test_oversize_content_length_is_refused_before_the_body_is_read() -> None:
    async with asyncio.timeout(50), running_service({"MAX_RESULT_BYTES": str(MiB)}) as server:
        head = (
            b"PUT /results/big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
        )
        # The declared length alone is refused: no body byte needs to arrive first.
        try:
            async with asyncio.timeout(5):
                outcome = await _oversize_upload(server.port, head, chunked=False, limit=0)
        except TimeoutError:
            pytest.fail("no answer within 5 s to a head declaring 1 GiB (no body sent)")
        _assert_payload_too_large(outcome)
        assert outcome.sent_total == 0

        # Streaming as fast as the socket takes it: the answer comes while the upload is
        # still going, after whatever the socket buffers held, not after the 1 GiB.
        outcome = await _oversize_upload(server.port, head, chunked=False)
        _assert_payload_too_large(outcome)
        assert outcome.sent_before_response < 8 * MiB, outcome.sent_before_response
        assert outcome.sent_total < 16 * MiB, outcome.sent_total
        # The server is still fine afterwards.
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200


async def test_oversize_chunked_upload_is_cut_off_without_buffering_it() -> None:
    async with asyncio.timeout(50), running_service({"MAX_RESULT_BYTES": str(MiB)}) as server:
        # Warm the process up (first request, imports, pool) before measuring memory.
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            warm = await client.put("/results/warm", json={"x": "y" * 1000})
            assert warm.status_code == 201, warm.text
        before = rss_bytes(server.pid)
        head = (
            b"PUT /results/big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        outcome = await _oversize_upload(server.port, head, chunked=True, pid=server.pid)
        after = rss_bytes(server.pid)
        _assert_payload_too_large(outcome)
        # Cut off soon after the limit, not after the whole GiB.
        assert outcome.sent_before_response < 16 * MiB, outcome.sent_before_response
        growth = max(after, outcome.peak_rss) - before
        assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/results/big")).status_code == 404


# --- 4. SIGTERM drains requests in flight ------------------------------------------------


async def _slow_document(pieces: int = 20, pause: float = 0.1) -> AsyncIterator[bytes]:
    """A JSON object, sent in pieces over ``pieces * pause`` seconds (chunked)."""
    yield b'{"pieces": ['
    for i in range(pieces):
        await asyncio.sleep(pause)
        yield b"%d, " % i
    yield b'"end"]}'


async def test_sigterm_lets_a_request_in_flight_finish(pg_url: str) -> None:
    analysis_id = unique_id("drain")
    async with (
        asyncio.timeout(50),
        running_service({"DATABASE_URL": pg_url}, args=("--graceful-timeout", "10")) as server,
    ):
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            put = asyncio.create_task(
                client.put(
                    f"/results/{analysis_id}",
                    content=_slow_document(),
                    headers={"Content-Type": "application/json"},
                )
            )
            await asyncio.sleep(0.5)
            assert not put.done(), "the upload should still be streaming"
            server.process.send_signal(signal.SIGTERM)
            signalled = time.perf_counter()
            await asyncio.sleep(0.5)
            # Draining: still running, but no longer accepting connections.
            assert server.process.returncode is None, server.log()
            async with httpx.AsyncClient(base_url=server.url, timeout=2) as fresh:
                with pytest.raises(httpx.ConnectError):
                    await fresh.get("/healthz")
            response = await put
        assert response.status_code == 201, response.text
        assert response.json()["version"] == 1

        status = await server.wait(timeout=15)
        assert time.perf_counter() - signalled < 10, "exited only after the graceful timeout"
        # Documented in service/cli.py: after the graceful shutdown uvicorn re-raises the
        # SIGTERM, so supervisors see "ended by SIGTERM" (143 in a shell), not a crash.
        assert status == -signal.SIGTERM, (status, server.log())
        log = server.log()
        assert "database pool closed" in log, log
        assert "Application shutdown complete" in log, log
        assert "Cancel" not in log, log  # nothing was cut off by the graceful timeout

    connection = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        row = await connection.fetchrow(
            "SELECT version, result::text AS result FROM results WHERE analysis_id = $1",
            analysis_id,
        )
    finally:
        await connection.close()
    assert row is not None
    assert row["version"] == 1
    assert orjson.loads(row["result"]) == {"pieces": [*range(20), "end"]}


# --- 5. an acknowledged write survives SIGKILL -------------------------------------------


async def test_acknowledged_writes_survive_sigkill(pg_url: str) -> None:
    prefix = unique_id("durable")
    # Far more writes than are answered before the kill, so some are always in flight.
    total, concurrency, kill_after = 2000, 50, 100
    acknowledged: dict[str, int] = {}
    failures: list[BaseException] = []
    unexpected: list[tuple[str, int, str]] = []
    answered = 0
    enough = asyncio.Event()
    gate = asyncio.Semaphore(concurrency)

    async with asyncio.timeout(55):
        async with running_service({"DATABASE_URL": pg_url}) as server:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with httpx.AsyncClient(base_url=server.url, timeout=15, limits=limits) as client:

                async def write(i: int) -> None:
                    nonlocal answered
                    analysis_id = f"{prefix}-{i:04d}"
                    async with gate:
                        try:
                            response = await client.put(
                                f"/results/{analysis_id}", json={"i": i, "prefix": prefix}
                            )
                        except httpx.TransportError as exc:  # the server died under us
                            failures.append(exc)
                            return
                    answered += 1
                    if answered >= kill_after:
                        enough.set()
                    if response.status_code in (200, 201):
                        acknowledged[analysis_id] = response.json()["version"]
                    else:
                        unexpected.append((analysis_id, response.status_code, response.text))

                writers = [asyncio.create_task(write(i)) for i in range(total)]
                try:
                    await asyncio.wait_for(enough.wait(), 30)
                    server.process.kill()
                    await server.wait(timeout=10)
                    await asyncio.gather(*writers)
                finally:
                    for task in writers:
                        task.cancel()
                    await asyncio.gather(*writers, return_exceptions=True)
            assert server.process.returncode == -signal.SIGKILL

        assert not unexpected, unexpected[:5]
        assert len(acknowledged) >= kill_after
        assert failures, "every write finished before the kill: nothing was in flight"
        assert len(acknowledged) + len(failures) == total

        # Start again on the same database: every acknowledged write is there.
        async with (
            running_service({"DATABASE_URL": pg_url}) as server,
            httpx.AsyncClient(base_url=server.url, timeout=15) as client,
        ):
            for analysis_id, version in sorted(acknowledged.items()):
                got = await client.get(f"/results/{analysis_id}")
                assert got.status_code == 200, (analysis_id, got.text)
                assert int(got.headers["etag"].strip('"')) >= version
                assert got.json()["prefix"] == prefix

    connection = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        rows = await connection.fetch(
            "SELECT analysis_id, version FROM results WHERE analysis_id LIKE $1 || '-%'", prefix
        )
    finally:
        await connection.close()
    stored = {row["analysis_id"]: row["version"] for row in rows}
    missing = {i: v for i, v in acknowledged.items() if stored.get(i, 0) < v}
    assert not missing, missing
