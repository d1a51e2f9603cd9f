"""A busy server accepts a burst of new connections at once (``service.accepting``).

libuv accepts one connection per turn of its loop; with the loop busy, a burst of new
clients waited a turn each before being accepted. A server on uvloop, with the
service's protocol, runs an app whose requests each hold the loop for 10 ms, while
sixteen clients keep it busy (a turn takes about 160 ms); then 32 clients connect at
once. Accepted one per turn, the last waits 32 turns for its first answer (over 5 s:
uvicorn's own protocol fails this test); accepted together, a few turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
import uvloop
from starlette.types import ASGIApp, Receive, Scope, Send

from service.server import GuardedHttpToolsProtocol
from tests.helpers import free_port

pytestmark = pytest.mark.slow

BUSY_CLIENTS = 16
BURST = 32
REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.fixture
async def busy_server() -> AsyncIterator[int]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "tests.support.busy_app:app"),
        *("--port", str(port), "--loop", "uvloop", "--lifespan", "off"),
        *("--http", "service.server:GuardedHttpToolsProtocol", "--no-access-log"),
        *("--log-level", "warning"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
            else:
                writer.close()
                break
        yield port
    finally:
        process.terminate()
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        assert b"ERROR" not in output, output.decode(errors="replace")


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)


async def keep_busy(port: int, stop: asyncio.Event) -> None:
    """One client asking the server on ``port`` again and again until ``stop``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            await ask(reader, writer)
    finally:
        writer.close()


async def test_a_busy_server_accepts_a_burst_of_connections_together(busy_server: int) -> None:
    stop = asyncio.Event()

    async def first_answer() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", busy_server)
        try:
            await ask(reader, writer)
            return time.monotonic() - started
        finally:
            writer.close()

    busy = [asyncio.ensure_future(keep_busy(busy_server, stop)) for _ in range(BUSY_CLIENTS)]
    try:
        await asyncio.sleep(0.5)
        waits = await asyncio.wait_for(asyncio.gather(*(first_answer() for _ in range(BURST))), 30)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*busy), 10)
    assert max(waits) < 2.5, sorted(round(wait, 2) for wait in waits)


def named(name: bytes) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": name})

    return app


def serve_both(
    sockets: list[socket.socket], started: threading.Event, stop: threading.Event
) -> None:
    """Serve app "a" on the first socket and app "b" on the second, on uvloop."""

    async def main() -> None:
        servers = [
            uvicorn.Server(
                uvicorn.Config(
                    named(name), lifespan="off", log_config=None, http=GuardedHttpToolsProtocol
                )
            )
            for name in (b"a", b"b")
        ]
        tasks = [
            asyncio.ensure_future(server.serve(sockets=[sock]))
            for server, sock in zip(servers, sockets, strict=True)
        ]
        while not all(server.started for server in servers):
            await asyncio.sleep(0.01)
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)

    uvloop.run(main())


async def test_connections_are_accepted_only_for_the_server_they_reached() -> None:
    """Two servers in one process on the same port, on two loopback addresses: each
    answers only the clients that connected to it, however many arrive at once."""
    first = socket.socket()
    first.bind(("127.0.0.1", 0))
    port = first.getsockname()[1]
    second = socket.socket()
    second.bind(("127.0.0.2", port))
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve_both, args=([first, second], started, stop))
    thread.start()
    try:
        assert await asyncio.to_thread(started.wait, 10)

        async def answer(host: str) -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                return (await reader.read()).rpartition(b"\r\n\r\n")[2]
            finally:
                writer.close()

        for _ in range(5):
            hosts = ["127.0.0.1", "127.0.0.2"] * 32
            answers = await asyncio.gather(*(answer(host) for host in hosts))
            assert answers == [b"a" if host == "127.0.0.1" else b"b" for host in hosts]
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
        first.close()
        second.close()


async def test_clients_that_reset_while_waiting_to_be_accepted_cost_nothing(
    busy_server: int,
) -> None:
    """A burst of clients that connect and reset at once, while the server is busy:
    those accepted together with others go away before they are set up, and the
    server logs no ERROR (the fixture checks its output) and answers the next client."""
    stop = asyncio.Event()

    busy = [asyncio.ensure_future(keep_busy(busy_server, stop)) for _ in range(BUSY_CLIENTS)]
    try:
        await asyncio.sleep(0.3)
        for _ in range(BURST):
            sock = socket.socket()
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", busy_server))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, before the server has accepted it
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*busy), 10)
    reader, writer = await asyncio.open_connection("127.0.0.1", busy_server)
    try:
        await asyncio.wait_for(ask(reader, writer), 5)
    finally:
        writer.close()
