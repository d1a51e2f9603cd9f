"""A private Redis Cluster (``redis-cli --cluster create``): three masters, each with
a replica.

Each node is a :class:`PrivateRedis` with cluster mode on and its ``nodes.conf`` in a
directory of its own, so a killed node started again rejoins the cluster (with no data:
nothing is persisted). ``cluster-node-timeout`` is short, so the cluster declares a
dead master failed, and promotes its replica, within a few seconds.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.helpers import free_port
from tests.support.private_redis import PrivateRedis
from tests.support.private_sentinel import command

NODE_TIMEOUT_MS = 1000
READY_TIMEOUT = 20.0


@dataclass
class PrivateCluster:
    nodes: list[PrivateRedis]

    async def masters(self) -> list[PrivateRedis]:
        """The nodes that are masters now."""
        found = []
        for node in self.nodes:
            if node.process is None:
                continue
            client = aioredis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
            try:
                if (await command(client, "ROLE"))[0] == b"master":
                    found.append(node)
            except (RedisError, OSError):
                continue
            finally:
                await client.aclose()
        return found

    @property
    def url(self) -> str:
        """``REDIS_URL`` for the service: every node (one would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    async def state(self, node: PrivateRedis) -> str | None:
        client = aioredis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
        try:
            info = (await command(client, "CLUSTER", "INFO")).decode()
        except (RedisError, OSError):
            return None
        finally:
            await client.aclose()
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return str(line.partition(":")[2].strip())
        return None

    async def wait_replicating(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running replica's link to its master is up (synced)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.process is None:
                continue
            client = aioredis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
            try:
                while True:
                    with suppress(RedisError, OSError):
                        info = await client.info("replication")
                        if info.get("role") == "master" or info.get("master_link_status") == "up":
                            break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"replica {node.port} did not sync in {timeout} s")
                    await asyncio.sleep(0.1)
            finally:
                await client.aclose()

    async def wait_masters_without(
        self, gone: PrivateRedis, timeout: float = READY_TIMEOUT
    ) -> None:
        """Until ``gone``'s slots are served by a promoted replica: as many masters as
        before, none of them ``gone``, and the cluster ok again."""
        deadline = time.monotonic() + timeout
        wanted = len(self.nodes) // 2
        while True:
            masters = await self.masters()
            if len(masters) == wanted and gone not in masters:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no replica took over from {gone.port} in {timeout} s")
            await asyncio.sleep(0.1)
        await self.wait_state("ok", max(1.0, deadline - time.monotonic()))

    async def wait_state(self, wanted: str, timeout: float = READY_TIMEOUT) -> float:
        """Until every running node says ``cluster_state:<wanted>``; the seconds it took."""
        started = time.monotonic()
        while True:
            running = [n for n in self.nodes if n.process is not None]
            states = [await self.state(n) for n in running]
            if states and all(state == wanted for state in states):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"cluster not {wanted} within {timeout} s: {states}")
            await asyncio.sleep(0.1)


async def _create(nodes: list[PrivateRedis], replicas: int) -> None:
    process = await asyncio.create_subprocess_exec(
        "redis-cli",
        "--cluster",
        "create",
        *(f"127.0.0.1:{node.port}" for node in nodes),
        "--cluster-replicas",
        str(replicas),
        "--cluster-yes",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    if process.returncode != 0:
        raise AssertionError(f"redis-cli --cluster create failed:\n{out.decode()}")


@asynccontextmanager
async def private_cluster(masters: int = 3, replicas: int = 1) -> AsyncIterator[PrivateCluster]:
    """A running cluster of ``masters`` masters with ``replicas`` replicas each, on free
    ports; stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="svc-cluster-") as scratch:
        nodes = []
        for index in range(masters * (1 + replicas)):
            home = Path(scratch) / f"node-{index}"
            home.mkdir()
            nodes.append(
                PrivateRedis(
                    free_port(),
                    home / "redis.log",
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(home / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(NODE_TIMEOUT_MS),
                        # The bus port defaults to the port + 10000: past 65535 for
                        # most free ports.
                        "--cluster-port",
                        str(free_port()),
                    ],
                )
            )
        cluster = PrivateCluster(nodes)
        try:
            for node in nodes:
                await node.start()
            await _create(nodes, replicas)
            await cluster.wait_state("ok")
            await cluster.wait_replicating()
            yield cluster
        finally:
            for node in nodes:
                node.thaw()
                with suppress(Exception):
                    await node.stop()
