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
import sys
import time
from collections.abc import AsyncIterator

import pytest

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


async def test_a_busy_server_accepts_a_burst_of_connections_together(busy_server: int) -> None:
    stop = asyncio.Event()

    async def keep_busy() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", busy_server)
        try:
            while not stop.is_set():
                await ask(reader, writer)
        finally:
            writer.close()

    async def first_answer() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", busy_server)
        try:
            await ask(reader, writer)
            return time.monotonic() - started
        finally:
            writer.close()

    busy = [asyncio.ensure_future(keep_busy()) for _ in range(BUSY_CLIENTS)]
    try:
        await asyncio.sleep(0.5)
        waits = await asyncio.wait_for(asyncio.gather(*(first_answer() for _ in range(BURST))), 30)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*busy), 10)
    assert max(waits) < 2.5, sorted(round(wait, 2) for wait in waits)
