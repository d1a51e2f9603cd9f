"""A private Redis master, its replica and three Sentinels, for failover tests.

Debian's ``redis-server`` for the data nodes and ``redis-server --sentinel`` for the
Sentinels, all on free loopback ports, keeping nothing on disk. The Sentinels declare
the master down after ``DOWN_AFTER_MS`` and need two of three to agree, so a killed
master is replaced by its replica within a few seconds.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.helpers import free_port
from tests.support.private_redis import PrivateRedis
from tests.support.server import stop_process

SERVICE = "svc"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT = 20.0
"""Seconds a test waits for the Sentinels to promote the replica."""


async def command(client: aioredis.Redis, *args: str | int) -> Any:
    """A raw command (redis-py leaves ``execute_command`` untyped)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


@dataclass
class SentinelGroup:
    master: PrivateRedis
    replica: PrivateRedis
    sentinel_ports: list[int]
    sentinels: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``REDIS_URL`` for the service: every Sentinel, and the service name."""
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/{SERVICE}"

    async def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
            try:
                address = await command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                return int(address[1])
            except (RedisError, OSError):
                continue
            finally:
                await client.aclose()
        return None

    async def wait_for_master(self, port: int, timeout: float = FAILOVER_TIMEOUT) -> float:
        """Wait until the Sentinels name ``port`` master and it says so itself; the seconds
        it took."""
        started = time.monotonic()
        client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            while True:
                with suppress(RedisError, OSError):
                    role = await command(client, "ROLE")
                    if await self.master_port() == port and role[0] == b"master":
                        return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"no failover to {port} within {timeout} s")
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    async def wait_replicating(self, timeout: float = 10.0) -> None:
        """Wait until the replica's link to the master is up and the Sentinels know it."""
        client = aioredis.Redis(host="127.0.0.1", port=self.replica.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                with suppress(RedisError, OSError):
                    info = await client.info("replication")
                    if info.get("master_link_status") == "up" and await self._sentinels_see_it():
                        return
                if time.monotonic() > deadline:
                    raise AssertionError("the replica did not start replicating")
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    async def _sentinels_see_it(self) -> bool:
        for port in self.sentinel_ports:
            client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
            try:
                replicas = await command(client, "SENTINEL", "REPLICAS", SERVICE)
                others = await command(client, "SENTINEL", "SENTINELS", SERVICE)
            finally:
                await client.aclose()
            if not replicas or len(others) < len(self.sentinel_ports) - 1:
                return False
        return True


def _sentinel_config(port: int, master_port: int, scratch: Path) -> str:
    return f"""\
port {port}
bind 127.0.0.1
daemonize no
dir {scratch}
sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2
sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}
sentinel failover-timeout {SERVICE} 5000
sentinel parallel-syncs {SERVICE} 1
"""


@asynccontextmanager
async def private_sentinel_group() -> AsyncIterator[SentinelGroup]:
    """A master, a replica of it and three Sentinels watching them; all stopped after."""
    with tempfile.TemporaryDirectory(prefix="svc-sentinel-") as scratch:
        root = Path(scratch)
        master = PrivateRedis(free_port(), root / "master.log")
        replica_port = free_port()
        replica = PrivateRedis(
            replica_port,
            root / "replica.log",
            ["--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0"],
        )
        group = SentinelGroup(master, replica, [free_port() for _ in range(3)])
        try:
            await master.start()
            await replica.start()
            for index, port in enumerate(group.sentinel_ports):
                config = root / f"sentinel-{index}.conf"
                config.write_text(_sentinel_config(port, master.port, root))
                with (root / f"sentinel-{index}.log").open("ab") as log:
                    group.sentinels.append(
                        await asyncio.create_subprocess_exec(
                            "redis-server",
                            str(config),
                            "--sentinel",
                            stdin=asyncio.subprocess.DEVNULL,
                            stdout=log,
                            stderr=asyncio.subprocess.STDOUT,
                        )
                    )
            await group.wait_replicating()
            yield group
        finally:
            for process in group.sentinels:
                await stop_process(process, 5.0)
            master.thaw()
            replica.thaw()
            await master.stop()
            await replica.stop()
