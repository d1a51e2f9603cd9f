"""A private PgBouncer in transaction mode, in front of a PostgreSQL server.

Debian's ``pgbouncer`` (1.18: no ``max_prepared_statements``, so a server connection
knows only the prepared statements its own clients made) on a free loopback port, with
few server connections per database so that clients really do share them. PgBouncer
refuses to run as root; as root it runs as the ``postgres`` OS user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from tests.helpers import free_port
from tests.support.server import stop_process

STARTUP_TIMEOUT = 10.0
OS_USER = "postgres"


@dataclass
class PrivatePgBouncer:
    """A running PgBouncer: clients connect to ``port``, any database name."""

    root: Path
    port: int
    process: asyncio.subprocess.Process

    def dsn(self, database: str = "postgres") -> str:
        """A libpq / asyncpg DSN of ``database`` through this PgBouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def _config(root: Path, port: int, postgres_dsn: str, pool_size: int) -> str:
    target = urlsplit(postgres_dsn)
    return f"""\
[databases]
* = host={target.hostname or "127.0.0.1"} port={target.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root / "users.txt"}
admin_users = postgres
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 2000
max_db_connections = {pool_size}
server_reset_query =
logfile = {root / "pgbouncer.log"}
pidfile = {root / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
"""


@asynccontextmanager
async def private_pgbouncer(
    postgres_dsn: str, *, pool_size: int = 4
) -> AsyncIterator[PrivatePgBouncer]:
    """PgBouncer in transaction mode in front of ``postgres_dsn``'s server, with at
    most ``pool_size`` server connections per database; stopped and removed afterwards."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).is_file():
        raise FileNotFoundError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    root = Path(tempfile.mkdtemp(prefix="svc-pgbouncer-"))
    port = free_port()
    (root / "users.txt").write_text('"postgres" ""\n')
    (root / "pgbouncer.ini").write_text(_config(root, port, postgres_dsn, pool_size))
    argv = [binary, str(root / "pgbouncer.ini")]
    if os.geteuid() == 0:
        user = pwd.getpwnam(OS_USER)
        for path in (root, *root.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        argv = ["runuser", "-u", OS_USER, "--", *argv]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    bouncer = PrivatePgBouncer(root, port, process)
    try:
        await _wait_ready(bouncer)
        yield bouncer
    finally:
        await stop_process(process, 5.0)
        with suppress(OSError):
            shutil.rmtree(root)


async def _wait_ready(bouncer: PrivatePgBouncer) -> None:
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
    while True:
        if bouncer.process.returncode is not None:
            raise AssertionError(f"pgbouncer exited:\n{bouncer.log()}")
        try:
            conn = await asyncpg.connect(bouncer.dsn(), statement_cache_size=0, timeout=2)
        except (OSError, asyncpg.PostgresError):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"pgbouncer did not start:\n{bouncer.log()}") from None
            await asyncio.sleep(0.05)
            continue
        await conn.close()
        return
