"""A throw-away PostgreSQL cluster for tests that stop and start the database.

Stopping the shared server on 5432 would break every other test (and developer) on the
machine, so fault tests get their own: ``initdb`` into a temporary directory owned by the
``postgres`` OS user, ``pg_ctl start`` on a free loopback port, and in ``finally`` a
``pg_ctl stop`` plus removal of the directory. Every command runs through
``asyncio.create_subprocess_exec``, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")
OS_USER = "postgres"
COMMAND_TIMEOUT = 60.0


def postgres_bin(version: str = "15") -> Path:
    """The bin directory of the installed PostgreSQL ``version`` (default 15)."""
    candidates = [POSTGRES_ROOT / version / "bin"]
    if POSTGRES_ROOT.is_dir():  # fall back to the newest installed version
        candidates += sorted((p / "bin" for p in POSTGRES_ROOT.iterdir()), reverse=True)
    for candidate in candidates:
        if (candidate / "pg_ctl").is_file() and (candidate / "initdb").is_file():
            return candidate
    raise FileNotFoundError(f"no PostgreSQL with initdb and pg_ctl under {POSTGRES_ROOT}")


async def _run(*command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``command`` as the postgres OS user; its output, or AssertionError if it fails."""
    argv = ["runuser", "-u", OS_USER, "--", *command] if os.geteuid() == 0 else list(command)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {process.returncode}:\n{text}")
    return text


@dataclass
class PrivateCluster:
    """A running (or stopped) private PostgreSQL cluster."""

    root: Path
    port: int
    bin: Path
    settings: tuple[str, ...] = ()
    """Server settings (``name=value``) given as ``-c`` options at every start."""

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """The same database as an asyncpg / libpq DSN."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def server_log(self) -> str:
        """What the postmaster has logged so far."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    async def start(self) -> None:
        """Start the server on the same port; return once it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        # pg_ctl hands -o to a shell, hence the quoting.
        options += "".join(f" -c {shlex.quote(setting)}" for setting in self.settings)
        await _run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, roll back; ``immediate``: no
        shutdown checkpoint); wait until it is down."""
        await _run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"
        )

    async def running(self) -> bool:
        """True while the postmaster is running."""
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", OS_USER, "--", *argv]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT) == 0


@asynccontextmanager
async def private_postgres(options: Sequence[str] = ()) -> AsyncIterator[PrivateCluster]:
    """A fresh PostgreSQL cluster on a free port of 127.0.0.1, trust auth, user postgres.

    ``options`` are server settings (``"shared_preload_libraries=pg_stat_statements"``),
    each passed as ``-c`` whenever the cluster starts. Always stopped and deleted
    afterwards, also when the body fails.
    """
    async with _new_cluster(postgres_bin(), options) as cluster:
        await _run(
            str(cluster.bin / "initdb"),
            "-D",
            str(cluster.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        )
        async with _running(cluster):
            yield cluster


@asynccontextmanager
async def private_standby(primary: PrivateCluster) -> AsyncIterator[PrivateCluster]:
    """A streaming standby of ``primary`` (``pg_basebackup -R``), on a free port, with
    the primary's settings; stopped and deleted afterwards. initdb's trust rules let
    127.0.0.1 connect for replication."""
    async with _new_cluster(primary.bin, primary.settings) as standby:
        await _run(
            str(standby.bin / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            "--no-sync",
        )
        async with _running(standby):
            yield standby


@asynccontextmanager
async def _new_cluster(bin_dir: Path, options: Sequence[str]) -> AsyncIterator[PrivateCluster]:
    """A cluster's place: a temporary directory the postgres user owns, a free port."""
    root = Path(tempfile.mkdtemp(prefix="svc-pg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        yield PrivateCluster(root, free_port(), bin_dir, tuple(options))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def _running(cluster: PrivateCluster) -> AsyncIterator[None]:
    """``cluster`` started, and stopped afterwards, also when the body fails."""
    try:
        await cluster.start()
        yield
    finally:
        if await cluster.running():
            try:
                await cluster.stop()
            except AssertionError:  # never leave a postmaster behind on a deleted dir
                await cluster.stop("immediate")
