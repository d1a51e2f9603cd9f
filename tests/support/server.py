"""Helpers for tests that run ``service serve`` as a real process behind uvicorn.

``running_service(env)`` starts ``python -m service serve`` on a free loopback port with
``HOME`` (and the working directory) in a fresh temporary directory, so the embedded
SQLite default and any ``./.env`` lookup stay inside it, waits for ``/healthz``, and
always terminates and reaps the process afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import free_port

STARTUP_TIMEOUT = 20.0
"""Seconds a server gets to answer ``/healthz`` before the test fails."""
STOP_TIMEOUT = 15.0
"""Seconds a server gets after SIGTERM before it is killed."""

# Settings of the service that must not leak from the developer's environment into a
# server that a test means to start with exactly the settings it names.
SERVICE_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "RESULT_TTL",
    "CACHE_PREFIX",
    "L1_MAX_BYTES",
    "L1_TTL",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "DB_POOL_TIMEOUT",
    "DB_POOL_RECYCLE",
    "DB_POOL_PRE_PING",
    "DB_CONNECT_TIMEOUT",
    "DB_STATEMENT_TIMEOUT",
    "COMPRESSION_MIN_SIZE",
    "COMPRESSION_ENCODINGS",
    "COMPRESSION_ZSTD_LEVEL",
    "COMPRESSION_BR_LEVEL",
    "COMPRESSION_GZIP_LEVEL",
    "METRICS_PORT",
    "METRICS_HOST",
    "MAX_RESULT_BYTES",
    "HTTP_MAX_AGE",
    "HTTP_S_MAXAGE",
    "HTTP_STALE_WHILE_REVALIDATE",
    "STALE_IF_ERROR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "ADMIN_TOKEN",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "MIGRATE_ON_START",
    "XDG_DATA_HOME",
)


def service_environ(home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without the service's settings, ``HOME=home``, then ``env`` on top."""
    environ = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    environ["HOME"] = str(home)
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(env or {})
    return environ


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise LookupError(f"no VmRSS for process {pid}")


@dataclass
class RunningService:
    """A ``service serve`` process started by :func:`running_service`."""

    url: str
    port: int
    home: Path
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        """The server's process id (uvicorn serves in this process: one worker)."""
        return self.process.pid

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    async def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the process to exit; its return code."""
        return await asyncio.wait_for(self.process.wait(), timeout)


async def stop_process(process: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaps the process."""
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with suppress(ProcessLookupError):
                process.kill()
    await process.wait()


async def wait_healthy(
    url: str,
    process: asyncio.subprocess.Process,
    timeout: float,
    *,
    name: str = "service",
    output: Callable[[], str],
) -> None:
    """Poll ``url``/healthz until it answers 200; fail with ``output()`` (what the
    process wrote) when it exits first or does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=2.0) as client:
        while True:
            if process.returncode is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode} before answering "
                    f"/healthz; its output:\n{output()}"
                )
            with suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} did not answer /healthz with 200 within {timeout} s; "
                    f"its output:\n{output()}"
                )
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running_service(
    env: Mapping[str, str],
    *,
    args: Sequence[str] = (),
    home: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
    stop_timeout: float = STOP_TIMEOUT,
) -> AsyncIterator[RunningService]:
    """Run ``python -m service serve --port <free> *args`` with ``env``; yield it once healthy.

    ``home`` (default: a fresh temporary directory, removed afterwards) becomes ``HOME``
    and the working directory. Output goes to a file there, so a chatty server never
    blocks on a full pipe. On exit the process is terminated (SIGTERM, then SIGKILL after
    ``stop_timeout`` seconds) and reaped, also when the body failed.
    """
    scratch = Path(tempfile.mkdtemp(prefix="svc-proc-"))
    home = home or scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    log_path = scratch / "service.log"
    port = free_port()
    command = [sys.executable, "-m", "service", "serve", "--port", str(port), *args]
    try:
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=service_environ(home, env),
                cwd=home,
            )
        service = RunningService(f"http://127.0.0.1:{port}", port, home, process, log_path)
        try:
            await wait_healthy(service.url, process, startup_timeout, output=service.log)
            yield service
        finally:
            await stop_process(process, stop_timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, str, str]:
    """Run ``python -m service *args`` to completion in a scratch HOME; (status, out, err)."""
    scratch = Path(tempfile.mkdtemp(prefix="svc-cli-"))
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=service_environ(scratch, env),
            cwd=scratch,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        finally:
            if process.returncode is None:
                with suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
