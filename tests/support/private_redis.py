"""A private ``redis-server`` for tests that stop and start Redis (never the shared one)."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.helpers import free_port
from tests.support.server import stop_process

STARTUP_TIMEOUT = 10.0
"""Seconds a private redis-server gets to answer PING."""
STOP_TIMEOUT = 5.0
"""Seconds a private redis-server gets after SIGTERM before it is killed."""


class PrivateRedis:
    """A ``redis-server`` of this test's own on ``port``: stop it and start it again at will.

    It keeps nothing on disk, so a restart comes back empty. Its output goes to
    ``log_path``, shown when it fails to start.
    """

    def __init__(self, port: int, log_path: Path, args: Sequence[str] = ()) -> None:
        self.port = port
        self.log_path = log_path
        self.args = tuple(args)
        """More options, at every start (``--replicaof 127.0.0.1 6379``, say)."""
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> None:
        """Run the server and wait until it answers PING."""
        assert self.process is None, "already running"
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                # A replica writes what its master sends to a file there, even with
                # --save "": keep it out of the working directory.
                "--dir",
                str(self.log_path.parent),
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM (SIGKILL after STOP_TIMEOUT); always reaps the process. Idempotent."""
        process, self.process = self.process, None
        if process is not None:
            await stop_process(process, STOP_TIMEOUT)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets (clients connect and send, the kernel
        buffers) but answers nothing: a stalled Redis, as a stuck host or a swapped-out
        process looks to its clients, rather than one that refuses connections."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`; harmless on a server that is not frozen."""
        if self.process is not None and self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL and reap: a crash, no goodbye to clients. :meth:`start` runs it again
        on the same port (empty: nothing is persisted). Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
        if process is not None:
            await process.wait()

    async def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        client = aioredis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        try:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"redis-server exited with {self.process.returncode} before "
                        f"answering PING; its output:\n{self.log()}"
                    )
                with suppress(RedisError, OSError):
                    if await client.ping():
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"redis-server did not answer PING within {STARTUP_TIMEOUT} s; "
                        f"its output:\n{self.log()}"
                    )
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()


@asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    """A started :class:`PrivateRedis` on a free port, stopped afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="svc-redis-") as scratch:
        server = PrivateRedis(free_port(), Path(scratch) / "redis.log")
        try:
            await server.start()
            yield server
        finally:
            await server.stop()
