"""The server's limits on request heads, against ``service serve`` over real sockets.

A head larger than MAX_HEADER_BYTES or with more than MAX_HEADERS fields is answered
431; one that takes longer than HEADER_TIMEOUT is answered 408; a connection that
sends nothing is closed. Meanwhile the server keeps answering everyone else, holds
no more than the limit in memory, and logs no ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime

import httpx
import orjson
import pytest
import uvloop
from starlette.types import Receive, Scope, Send

from service.server import GuardedHttpToolsProtocol
from tests.helpers import serving
from tests.support.server import RunningService, rss_bytes, running_service

pytestmark = pytest.mark.slow

LIMITS = {
    "MAX_HEADER_BYTES": "8192",
    "MAX_HEADERS": "20",
    "HEADER_TIMEOUT": "1",
    "SEND_TIMEOUT": "1",
    "MAX_RESULT_BYTES": str(8 * 1024 * 1024),
}


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[RunningService]:
    async with running_service(LIMITS) as service:
        yield service
        log = service.log()
        assert "ERROR" not in log, log
        assert "Traceback" not in log, log


async def exchange(port: int, request: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_and_problem(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/problem+json" in head.lower(), head
    assert b"connection: close" in head.lower(), head
    problem = orjson.loads(body)
    assert problem["status"] == status
    return status, problem


async def healthz_seconds(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        started = time.perf_counter()
        assert (await client.get("/healthz")).status_code == 200
        return time.perf_counter() - started


async def test_a_head_within_the_limits_is_served(server: RunningService) -> None:
    headers = "".join(f"x-field-{i}: {'v' * 200}\r\n" for i in range(15))
    request = f"GET /healthz HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n".encode()
    response = await exchange(server.port, request)
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


async def test_a_huge_header_is_431_after_at_most_the_limit(server: RunningService) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    before = rss_bytes(server.pid)
    answer = asyncio.ensure_future(reader.read())
    sent = 0
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
        chunk = b"a" * 65536
        # Up to 64 MiB of one header value, until the server answers.
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024 and not answer.done():
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        response = await asyncio.wait_for(answer, 5)
    finally:
        writer.close()
    # The server drops what follows the refusal unread, so how much the client got to
    # send says little; what it held says more (below).
    status, problem = status_and_problem(response)
    assert status == 431
    assert problem["type"] == "/problems/header-too-large"
    assert rss_bytes(server.pid) - before < 16 * 1024 * 1024
    assert await healthz_seconds(server.url) < 0.5


async def test_a_huge_header_in_one_piece_is_431(server: RunningService) -> None:
    request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n"
    status, problem = status_and_problem(await exchange(server.port, request))
    assert status == 431
    assert "MAX_HEADER_BYTES" in str(problem["detail"])


async def test_too_many_header_fields_is_431(server: RunningService) -> None:
    headers = "".join(f"x-field-{i}: v\r\n" for i in range(25))
    request = f"GET /healthz HTTP/1.1\r\nhost: x\r\n{headers}\r\n".encode()
    status, problem = status_and_problem(await exchange(server.port, request))
    assert status == 431
    assert "MAX_HEADERS" in str(problem["detail"])


async def test_slow_heads_are_cut_off_and_others_are_served(server: RunningService) -> None:
    """Two hundred clients trickling a request line: each gets 408 after HEADER_TIMEOUT."""

    async def trickle() -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        answer = asyncio.ensure_future(reader.read())
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\n":
                if answer.done() or time.monotonic() - started > 10:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
            return await asyncio.wait_for(answer, 5), time.monotonic() - started
        finally:
            writer.close()

    slow = [asyncio.ensure_future(trickle()) for _ in range(200)]
    await asyncio.sleep(0.5)
    assert await healthz_seconds(server.url) < 0.5
    outcomes = await asyncio.gather(*slow)
    for response, seconds in outcomes:
        assert seconds < 3, f"held for {seconds:.1f} s"
        status, problem = status_and_problem(response)
        assert status == 408
        assert problem["type"] == "/problems/request-timeout"


async def test_a_silent_connection_is_closed(server: RunningService) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert 0.8 < time.monotonic() - started < 3


async def test_keep_alive_requests_each_get_the_full_allowance(server: RunningService) -> None:
    """The head timer starts again with each request on a kept-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 5)
            assert line.startswith(b"HTTP/1.1 200"), line
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            await asyncio.sleep(0.7)  # together more than HEADER_TIMEOUT, each less
    finally:
        writer.close()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
KEEP_ALIVE = 5.0
"""uvicorn's default keep-alive timeout, which ``service serve`` keeps."""


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length: its status line, head and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


@pytest.fixture(scope="module")
async def hit(server: RunningService) -> bytes:
    """A GET the server answers from L1 by itself (see ``service.server``)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.put("/results/kept", json={"a": 1})).status_code in (200, 201)
        for _ in range(2):  # the second read is an L1 hit
            read = await client.get("/results/kept")
        assert read.headers["cache-status"].endswith("detail=l1"), read.headers
    return b"GET /results/kept HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.mark.parametrize("target", ["hit", "app"])
async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: RunningService, hit: bytes, target: str
) -> None:
    """Once a response is sent, a connection waits for the next request as long as
    uvicorn's keep-alive timeout says, HEADER_TIMEOUT or not, then is closed silently;
    whether the server answered the read itself (a hit) or the app did."""
    request = hit if target == "hit" else HEALTHZ
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(2):
            writer.write(request)
            assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
            answered = time.monotonic()
            await asyncio.sleep(2.5)  # past HEADER_TIMEOUT: still open
        assert await asyncio.wait_for(reader.read(), KEEP_ALIVE + 3) == b""
        assert KEEP_ALIVE - 0.5 < time.monotonic() - answered < KEEP_ALIVE + 1.5
    finally:
        writer.close()


def test_a_request_sent_in_time_to_a_busy_server_is_answered_not_reset() -> None:
    """A request that reached the socket before the keep-alive wait ended, while the
    event loop was busy, is answered. uvloop runs due timers before it reads sockets:
    the wait's timer used to close the connection first, and the client, whose request
    was in time, got a reset instead of an answer."""

    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def busy_reading(client: socket.socket) -> None:
        """Send the next request, then keep the loop busy past the wait's end, in a
        callback of its reading phase (as a server busy answering others is): uvloop
        runs its due timers next, before it reads the server's socket again."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        wake, ring = socket.socketpair()

        def busy() -> None:
            loop.remove_reader(wake.fileno())
            client.sendall(HEALTHZ)  # in the server's socket, not read yet
            time.sleep(0.5)
            done.set_result(None)

        with wake, ring:
            loop.add_reader(wake.fileno(), busy)
            ring.send(b"!")
            await done

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        async with serving(ok, http=GuardedHttpToolsProtocol, timeout_keep_alive=0.3) as url:
            port = int(url.rsplit(":", 1)[1])
            answers: list[bytes] = []
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.setblocking(False)
                for _ in range(2):
                    await loop.sock_sendall(client, HEALTHZ)
                    await asyncio.sleep(0.1)  # answered, then the keep-alive wait begins
                    await busy_reading(client)
                    answer = b""
                    async with asyncio.timeout(5):
                        while answer.count(b"HTTP/1.1 204") < 2:
                            read = await loop.sock_recv(client, 4096)
                            if not read:
                                break  # closed (or reset: sock_recv raises)
                            answer += read
                    answers.append(answer)
            return answers

    for answer in uvloop.run(scenario()):
        assert answer.count(b"HTTP/1.1 204") == 2, answer


async def test_a_head_begun_on_an_idle_connection_has_the_head_timeout(
    server: RunningService, hit: bytes
) -> None:
    """The keep-alive wait is longer than HEADER_TIMEOUT: a head begun during it is
    still cut off at HEADER_TIMEOUT."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(hit)
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.5)  # the connection's timer has gone off once meanwhile
        writer.write(b"GET /healthz HTTP/1.1\r\nho")
        started = time.monotonic()
        status, problem = status_and_problem(await asyncio.wait_for(reader.read(), 5))
        assert status == 408, problem
        assert time.monotonic() - started < 2.5
    finally:
        writer.close()


async def test_a_refusal_after_pipelined_hits_comes_after_their_answers(
    server: RunningService, hit: bytes
) -> None:
    """Answers the server gives from L1 are written once the event loop has read every
    connection; a refusal in the same read is written at once, but only after them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(hit * 10 + b"GET /healthz HTTP/1.1\r\nhost x\r\n\r\n")
        for _ in range(10):
            assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        status, problem = status_and_problem(await asyncio.wait_for(reader.read(), 5))
        assert status == 400, problem
    finally:
        writer.close()


async def test_many_pipelined_hits_are_all_answered_in_order(
    server: RunningService, hit: bytes
) -> None:
    """Past sixteen answers waiting to be written, the rest of a pipelined batch is
    answered the usual way: every request still gets its answer, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"".join(hit if n % 25 else HEALTHZ for n in range(1, 101)))
        for n in range(1, 101):
            answer = await read_response(reader)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert (b'"status"' in answer) == (n % 25 == 0), (n, answer)
    finally:
        writer.close()


async def test_clients_that_stop_reading_are_dropped_with_their_responses(
    server: RunningService,
) -> None:
    """Thirty clients ask for a 6 MB result and read nothing: after SEND_TIMEOUT each
    connection is dropped with what it still had to receive (in the process and in the
    kernel), while others are served."""
    document = {"rows": ["x" * 1000] * 6000}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        put = await client.put("/results/big", json=document)
        assert put.status_code in (200, 201), put.text
        size = len(
            (await client.get("/results/big", headers={"accept-encoding": "identity"})).content
        )

    async def stalled() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        # A small limit: the stream stops reading the socket, as a stalled client does.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        writer.write(b"GET /results/big HTTP/1.1\r\nhost: x\r\naccept-encoding: identity\r\n\r\n")
        await writer.drain()
        return reader, writer

    clients = [await stalled() for _ in range(30)]
    try:
        await asyncio.sleep(2.5)  # past SEND_TIMEOUT
        assert await healthz_seconds(server.url) < 0.5
        for reader, _ in clients:
            received = 0
            with contextlib.suppress(ConnectionError):
                while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                    received += len(chunk)
            assert received < size, "the whole response was kept for a client reading nothing"
    finally:
        for _, writer in clients:
            writer.close()


async def test_half_a_head_in_one_packet_is_408(server: RunningService) -> None:
    started = time.monotonic()
    status, problem = status_and_problem(
        await exchange(server.port, b"GET /healthz HTTP/1.1\r\nho")
    )
    assert status == 408
    assert problem["type"] == "/problems/request-timeout"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("request_bytes", "status", "slug"),
    [
        (
            b"PUT /results/x HTTP/1.1\r\nhost: x\r\n"
            b"content-length: 99999999999999999999999\r\n\r\n",
            413,
            "payload-too-large",
        ),
        (b"GET /healthz HTTP/1.1\r\nhost x\r\n\r\n", 400, "bad-request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad-request"),  # TLS on HTTP
    ],
    ids=["giant content-length", "header without colon", "tls hello"],
)
async def test_what_the_parser_refuses_is_a_problem(
    server: RunningService, request_bytes: bytes, status: int, slug: str
) -> None:
    got, problem = status_and_problem(await exchange(server.port, request_bytes))
    assert got == status
    assert problem["type"] == f"/problems/{slug}"


async def test_a_pipelining_client_that_goes_away_costs_no_error(
    server: RunningService,
) -> None:
    """Sixteen pipelined GETs of a large result, nothing read, then the client resets:
    the request being answered must see the disconnect (uvicorn told only the newest)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        put = await client.put("/results/pipelined", json={"rows": ["y" * 1000] * 3000})
        assert put.status_code in (200, 201), put.text
    for _ in range(5):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        request = b"GET /results/pipelined HTTP/1.1\r\nhost: x\r\naccept-encoding: identity\r\n\r\n"
        await asyncio.get_running_loop().sock_sendall(sock, request * 16)
        await asyncio.sleep(0.3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, with the answer still being written
    await asyncio.sleep(0.5)
    assert await healthz_seconds(server.url) < 0.5
    log = server.log()
    assert "ERROR" not in log, log
    assert "Traceback" not in log, log


async def test_date_is_the_second_the_answer_starts_in() -> None:
    """uvicorn renews Date once a second and gives a request the value of when it
    arrived; an answer started a second later carries the later Date."""

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(1.2)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async with serving(slow, http=GuardedHttpToolsProtocol) as url, httpx.AsyncClient() as client:
        for _ in range(2):  # the second on a kept-alive connection
            asked = time.time()
            answer = await client.get(url)
            assert parsedate_to_datetime(answer.headers["date"]).timestamp() >= int(asked) + 1
