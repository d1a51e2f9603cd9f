"""Where cached bytes live: Redis (shared by every replica) or this process's memory.

Backends store and return bytes under full keys; naming, serialization, TTL rules and
fail-open behaviour belong to :class:`service.cache.manager.CacheManager`. Every method
is a coroutine so the two are interchangeable; the memory backend never awaits.

Versioned values (``set_if_newer``) start with their version in decimal and a space;
a write replaces the stored value only when it carries a higher version (or the stored
one is version 0, or not versioned at all), so the order in which concurrent writers
arrive cannot put an older version back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from binascii import crc_hqx
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, DefaultParser
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MovedError,
    RedisError,
)

from service import defaults, redis_urls
from service.errors import InvalidArgument

logger = logging.getLogger(__name__)

# What one entry costs beyond its key and value bytes (dict slot, tuple, floats).
_ENTRY_OVERHEAD = 100

Notice = tuple[str, str]
"""A pub/sub ``(channel, message)`` that a backend shared by replicas publishes with a write."""

# Compare and set in one atomic step, publishing the notice in the same round trip
# (PUBLISH, or SPUBLISH on a cluster, where the channel shares the key's hash slot).
# GETRANGE reads only the head of the stored value, never a whole document. The same
# version may be written again (its content never changes): that is how a refresh
# renews an entry's lifetime. Several writes go in one call, in order: six arguments
# each (version, value, PX or 0, channel or '', message, PUBLISH or SPUBLISH).
_SET_IF_NEWER = """
local written = {}
for i = 1, #KEYS do
  local at = (i - 1) * 6
  local head = redis.call('GETRANGE', KEYS[i], 0, 24)
  local stored = tonumber(string.match(head, '^(%d+) '))
  written[i] = 0
  if stored == nil or stored == 0 or tonumber(ARGV[at + 1]) >= stored then
    if ARGV[at + 3] == '0' then
      redis.call('SET', KEYS[i], ARGV[at + 2])
    else
      redis.call('SET', KEYS[i], ARGV[at + 2], 'PX', ARGV[at + 3])
    end
    written[i] = 1
  end
  if ARGV[at + 4] ~= '' then
    redis.call(ARGV[at + 6], ARGV[at + 4], ARGV[at + 5])
  end
end
return written
"""
MAX_BATCH = 64
"""Compare-and-sets sent in one script call at most (see :meth:`RedisBackend.set_if_newer`)."""


@dataclass(slots=True)
class _Batch:
    """Compare-and-sets made during one turn of the event loop, sent together."""

    keys: list[str] = field(default_factory=list)
    args: list[bytes | int | str] = field(default_factory=list)
    waiting: list[asyncio.Future[bool | None]] = field(default_factory=list)
    sent: bool = False


class CacheBackend(Protocol):
    """The operations a cache backend offers (all keys are full keys)."""

    name: str

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl: float | None) -> None: ...
    async def set_many(self, items: Mapping[str, bytes], ttl: float | None) -> None: ...
    async def set_if_newer(
        self, key: str, value: bytes, ttl: float | None, notify: Notice | None = None
    ) -> bool | None: ...
    async def delete(self, keys: Sequence[str]) -> int: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    async def publish(self, channel: str, message: str) -> None: ...
    async def info(self) -> dict[str, int | str | bool]: ...
    async def aclose(self) -> None: ...


class MemoryBackend:
    """An in-process LRU bounded by bytes, with per-entry TTL.

    The L1 tier in front of Redis, and the whole cache when REDIS_URL is unset. Entries
    past their TTL are dropped when touched; when the byte budget is exceeded, the
    least recently used entries go first. A value larger than the budget is not stored.
    """

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes < 0:
            raise InvalidArgument("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self.size_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        return self.peek(key)

    def peek(self, key: str) -> bytes | None:
        """``get`` without a coroutine, for the hot path."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.put(key, value, ttl)

    def put(self, key: str, value: bytes, ttl: float | None) -> None:
        """``set`` without a coroutine, for callers that must not yield in between."""
        self._drop(key)
        cost = _cost(key, value)
        if cost > self.max_bytes:
            return
        expires_at = None if ttl is None else self._clock() + ttl
        self._entries[key] = (value, expires_at)
        self.size_bytes += cost
        while self.size_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None) -> None:
        for key, value in items.items():
            await self.set(key, value, ttl)

    async def set_if_newer(
        self, key: str, value: bytes, ttl: float | None, notify: Notice | None = None
    ) -> bool:
        """Store ``value`` unless a higher version is stored; nobody else to notify."""
        stored = await self.get(key)
        if stored is not None and not _supersedes(value, stored):
            return False
        await self.set(key, value, ttl)
        return True

    async def delete(self, keys: Sequence[str]) -> int:
        return sum(self._drop(key) for key in keys)

    def discard(self, key: str) -> None:
        """``delete`` of one key without a coroutine."""
        self._drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self.size_bytes = 0

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        return await self.delete(doomed)

    async def publish(self, channel: str, message: str) -> None:
        """Nothing to do: no other process shares this memory."""

    async def info(self) -> dict[str, int | str | bool]:
        return {
            "entries": len(self._entries),
            "bytes": self.size_bytes,
            "max_bytes": self.max_bytes,
            "evictions": self.evictions,
        }

    async def aclose(self) -> None:
        self.clear()

    def _drop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.size_bytes -= _cost(key, entry[0])
        return True


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + _ENTRY_OVERHEAD


def leading_version(value: bytes) -> int | None:
    """The version a versioned value starts with, or None when it has none."""
    head, space, _ = value[:25].partition(b" ")
    return int(head) if space and head.isdigit() else None


def _supersedes(new: bytes, stored: bytes) -> bool:
    # The same rule as the Lua script above.
    old = leading_version(stored)
    return old is None or old == 0 or (leading_version(new) or 0) >= old


class RedisBackend:
    """Redis through ``redis.asyncio``, with hiredis and a blocking connection pool.

    A burst beyond ``max_connections`` waits up to ``pool_timeout`` for a free connection
    instead of failing with "Too many connections"; every socket operation is bounded by
    ``socket_timeout``, so a hung Redis costs a short, known wait. Errors propagate: the
    manager decides what a failure means.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = defaults.REDIS_MAX_CONNECTIONS,
        socket_timeout: float = defaults.REDIS_TIMEOUT,
        pool_timeout: float = 1.0,
    ) -> None:
        self._url = url  # may hold a password: never logged
        self._socket_timeout = socket_timeout
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "timeout": pool_timeout,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            # Made once: by default each new connection reads redis-py's package
            # metadata from disk (for CLIENT SETINFO), on the event loop.
            "driver_info": _DRIVER_INFO,
        }
        self._sentinel_url = redis_urls.parse(url) if redis_urls.is_sentinel_url(url) else None
        self._sentinel: Sentinel | None = None
        self._cluster: _Cluster | None = None
        self._cluster_url: redis_urls.ClusterURL | None = None
        self.client: Any
        if self._sentinel_url is not None:
            self._sentinel, self.client = _master_client(
                self._sentinel_url, blocking=True, **options
            )
            self._pool = self.client.connection_pool
        elif redis_urls.is_cluster_url(url):
            self._cluster_url = redis_urls.parse_cluster(url)
            self._cluster = self.client = _cluster_client(self._cluster_url, options)
        else:
            self._pool = aioredis.BlockingConnectionPool.from_url(url, **options)
            self.client = aioredis.Redis(connection_pool=self._pool)
        self._replicas: int | None = 1 if self._sentinel_url else None if self._cluster else 0
        self._node_replicas: dict[str, tuple[int, float]] = {}
        self._node_clients: dict[tuple[str, int], aioredis.Redis] = {}
        # The write clients of each cluster master (see _node_client) need its password.
        password = self._cluster_url.password if self._cluster_url else None
        self._options = {**options, "password": password} if password else options
        self._set_if_newer = self.client.register_script(_SET_IF_NEWER)
        self._batch: _Batch | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.hiredis = uses_hiredis()
        if not self.hiredis:
            logger.warning("hiredis is not in use: Redis replies are parsed in pure Python")

    @property
    def replicas_to_wait_for(self) -> int | None:
        """Replicas that must have a versioned write before it counts as reached: one
        behind Sentinel, whose failover promotes a replica that asynchronous replication
        may not have brought the write to yet; on a cluster (None), one where the key's
        master has replicas (:meth:`_replicas_of`); 0 to trust the master alone."""
        return self._replicas

    @replicas_to_wait_for.setter
    def replicas_to_wait_for(self, count: int | None) -> None:
        self._replicas = count

    async def _replicas_of(self, key: str) -> int:
        """Whether the cluster master of ``key`` has replicas (1) or not (0), as its
        ``INFO replication`` said within the last :data:`REPLICAS_RECHECK` seconds."""
        assert self._cluster is not None
        node = self._cluster.get_node_from_key(key)
        if node is None:
            return 0
        known = self._node_replicas.get(node.name)
        now = time.monotonic()
        if known is None or now - known[1] > REPLICAS_RECHECK:
            info = await self._cluster.info("replication", target_nodes=node)
            known = (1 if int(info.get("connected_slaves", 0)) else 0, now)
            self._node_replicas[node.name] = known
        return known[0]

    def stored_key(self, key: str) -> str:
        """The key as stored: on a cluster, behind the hash tag of its bucket, which its
        invalidation notices share (:func:`bucket_tag`)."""
        return bucket_tag(key) + key if self._cluster is not None else key

    async def get(self, key: str) -> bytes | None:
        return _as_bytes(await self.client.get(self.stored_key(key)))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if self._cluster is not None:
            values = await self._cluster.mget_nonatomic([self.stored_key(k) for k in keys])
        else:
            values = await self.client.mget(keys)
        return [_as_bytes(value) for value in values]

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        await self.client.set(self.stored_key(key), value, px=_milliseconds(ttl))

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None) -> None:
        if not items:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self.stored_key(key), value, px=_milliseconds(ttl))
            await pipe.execute()

    async def set_if_newer(
        self, key: str, value: bytes, ttl: float | None, notify: Notice | None = None
    ) -> bool | None:
        """Compare and set atomically (a Lua script), publishing ``notify`` with it.

        The compare-and-sets made during one turn of the event loop go to Redis in one
        script call (at most :data:`MAX_BATCH`; not on a cluster, whose keys live on
        several masters). Database replies arrive in bursts, since a commit wakes every
        backend that waited on the same WAL flush, and a burst of writes then costs one
        round trip and one pass through redis-py instead of one each. Each write is
        still its own compare-and-set, in the order they were made.

        With :attr:`replicas_to_wait_for`, ``WAIT`` follows in the same round trip; a
        write no replica confirmed within half the socket timeout returns None, as if
        Redis had not been reached: a failover could promote a replica without it.
        """
        channel, message = notify or ("", "")
        version = leading_version(value)
        if version is None:
            raise InvalidArgument("a versioned value starts with its version and a space")
        stored = self.stored_key(key)
        publish = "PUBLISH"
        if self._cluster is not None and channel:
            channel, publish = bucket_tag(key) + channel, "SPUBLISH"
        args: list[bytes | int | str] = [
            version, value, _milliseconds(ttl) or 0, channel, message, publish
        ]  # fmt: skip
        if self._cluster is not None:
            return await self._cluster_set_if_newer(stored, args, self._replicas)
        batch = self._batch
        if batch is None or len(batch.waiting) >= MAX_BATCH:
            batch = self._batch = _Batch()
            asyncio.get_running_loop().call_soon(self._send_soon, batch)
        batch.keys.append(stored)
        batch.args += args
        written: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        batch.waiting.append(written)
        return await written

    def _send_soon(self, batch: _Batch) -> None:
        if self._batch is batch:
            self._batch = None
        if batch.sent:
            return
        batch.sent = True
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Batch) -> None:
        """One script call for ``batch``; each caller gets its own outcome, or the error."""
        try:
            wait_for = self._replicas
            if not wait_for:
                replies = await self._set_if_newer(keys=batch.keys, args=batch.args)
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    await self._set_if_newer(keys=batch.keys, args=batch.args, client=pipe)
                    pipe.execute_command("WAIT", wait_for, self._wait_ms)
                    replies, replicas = await pipe.execute()
                if int(replicas) < wait_for:
                    replies = [None if written else 0 for written in replies]
        except asyncio.CancelledError:  # the loop is closing: so are the callers
            for waiting in batch.waiting:
                waiting.cancel()
            raise
        except Exception as exc:
            for waiting in batch.waiting:
                if not waiting.done():
                    waiting.set_exception(exc)
            return
        for waiting, written in zip(batch.waiting, replies, strict=True):
            if not waiting.done():
                waiting.set_result(None if written is None else bool(written))

    async def _cluster_set_if_newer(
        self, stored: str, args: list[bytes | int | str], wait_for: int | None
    ) -> bool | None:
        """The compare-and-set on the key's master, through a client of that node: WAIT
        counts the replicas that have what *its own connection* wrote, so the script
        and WAIT must share a connection, and redis-py's cluster pipeline refuses
        scripts. A slot that moved meanwhile answers MOVED: an error like any other."""
        assert self._cluster is not None
        await self._cluster.initialize()  # learns the slots on first use (then a no-op)
        node = self._cluster.get_node_from_key(stored)
        if node is None:
            raise ClusterDownError(f"no master serves the slot of {stored!r}")
        if wait_for is None:
            wait_for = await self._replicas_of(stored)
        client = self._node_client(node.host, int(node.port))
        try:
            async with client.pipeline(transaction=False) as pipe:
                await self._set_if_newer(keys=[stored], args=args, client=pipe)
                if wait_for:
                    pipe.execute_command("WAIT", wait_for, self._wait_ms)
                replies = await pipe.execute()
        except (ConnectionError, TimeoutError, MovedError):
            # The master went away, or its slot moved: learn the cluster's shape again
            # (the cluster client does so after its own failures, not after these).
            with contextlib.suppress(RedisError, OSError):
                await self._cluster.nodes_manager.initialize()
            raise
        (written,) = replies[0]
        if wait_for and written and int(replies[1]) < wait_for:
            return None
        return bool(written)

    @property
    def _wait_ms(self) -> int:
        """How long WAIT waits for replicas: half the socket timeout."""
        return max(1, int(self._socket_timeout * 500))

    def _node_client(self, host: str, port: int) -> aioredis.Redis:
        client = self._node_clients.get((host, port))
        if client is None:
            pool = aioredis.BlockingConnectionPool(host=host, port=port, **self._options)
            client = aioredis.Redis.from_pool(pool)  # closes its pool with it
            self._node_clients[(host, port)] = client
        return client

    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        removed: int = await self.client.unlink(*(self.stored_key(key) for key in keys))
        return removed

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN and UNLINK in batches: never KEYS, never one long blocking command (on a
        cluster, SCAN goes to every master)."""
        pattern = _glob_escape(prefix) + "*"
        if self._cluster is not None:
            pattern = "{r*}" + pattern  # behind any bucket's tag
        removed = 0
        batch: list[str | bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            removed += await self.client.unlink(*batch)
        return removed

    async def publish(self, channel: str, message: str) -> None:
        if self._cluster is not None:
            # Every listener follows every bucket's channel: one of them reaches all.
            await self._cluster.execute_command("SPUBLISH", bucket_tag("") + channel, message)
        else:
            await self.client.publish(channel, message)

    async def info(self) -> dict[str, int | str | bool]:
        """What Redis says of itself: version, memory, evictions, its own hit counts (on
        a cluster, summed over the masters)."""
        nodes = self._cluster.get_primaries() if self._cluster is not None else [None]
        found: dict[str, int | str | bool] = {"hiredis": self.hiredis}
        for node in nodes:
            target = {} if node is None else {"target_nodes": node}
            server = await self.client.info("server", **target)
            memory = await self.client.info("memory", **target)
            stats = await self.client.info("stats", **target)
            keys = await self.client.dbsize(**target)
            found.setdefault("redis_version", str(server.get("redis_version", "")))
            found.setdefault("maxmemory_policy", str(memory.get("maxmemory_policy", "")))
            for name, value in (
                ("keys", keys),
                ("used_memory", memory.get("used_memory", 0)),
                ("maxmemory", memory.get("maxmemory", 0)),
                ("evicted_keys", stats.get("evicted_keys", 0)),
                ("keyspace_hits", stats.get("keyspace_hits", 0)),
                ("keyspace_misses", stats.get("keyspace_misses", 0)),
            ):
                found[name] = int(found.get(name, 0)) + int(value)
        return found

    async def subscriptions(self, channel: str) -> list[Subscription]:
        """What a listener of ``channel`` subscribes to: one connection and ``channel``;
        on a cluster, a connection to each master and, with SSUBSCRIBE, the channel of
        every bucket whose slot that master serves."""
        if self._cluster is None:
            return [Subscription(self.subscriber(), (channel,), sharded=False)]
        await self._cluster.initialize()
        by_node: dict[tuple[str, int], list[str]] = {}
        for tag in BUCKET_TAGS:
            node = self._cluster.get_node_from_key(tag + channel)
            if node is None:  # a slot no master serves: the cluster is not whole
                raise ClusterDownError(f"no master serves the slot of {tag + channel}")
            by_node.setdefault((node.host, int(node.port)), []).append(tag + channel)
        options = self._subscriber_options()
        return [
            Subscription(aioredis.Redis(host=host, port=port, **options), tuple(channels), True)
            for (host, port), channels in by_node.items()
        ]

    def subscriber(self) -> aioredis.Redis:
        """A client of its own for one long-lived pub/sub connection.

        It does not retry: a lost connection must reach the listener, which has to
        assume it missed messages. Reads are bounded by the listener, not by the
        short socket timeout meant for commands.
        """
        options = self._subscriber_options()
        if self._sentinel_url is not None:
            return _master_client(self._sentinel_url, blocking=False, **options)[1]
        return aioredis.Redis.from_url(self._url, **options)

    def _subscriber_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_connect_timeout": self._socket_timeout,
            "retry": Retry(NoBackoff(), 0),
            "driver_info": _DRIVER_INFO,
        }
        if self._cluster_url is not None and self._cluster_url.password:
            options["password"] = self._cluster_url.password
        return options

    async def aclose(self) -> None:
        if self._batch is not None:
            self._send_soon(self._batch)
        if self._sending:  # writes already made: let them reach Redis (or fail)
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._cluster is not None:
            await self._cluster.shut()
        else:
            await self.client.aclose()
            await self._pool.disconnect()
        for client in self._node_clients.values():
            await client.aclose()
        if self._sentinel is not None:
            for node in self._sentinel.sentinels:
                await node.aclose()


@dataclass(frozen=True, slots=True)
class Subscription:
    """A connection for the invalidation listener, and the channels it follows there."""

    client: aioredis.Redis
    channels: tuple[str, ...]
    sharded: bool
    """SSUBSCRIBE (a cluster's shard channels) rather than SUBSCRIBE."""


REPLICAS_RECHECK = 5.0
"""Seconds a cluster master's count of replicas is trusted before it is asked again."""
BUCKETS = 256
"""On a cluster, keys fall into this many buckets, each a hash tag (a slot) that its
keys and its channel of notices share, so that a write and its notice are one script
on one master, and a listener follows one channel per bucket (SSUBSCRIBE takes one slot
at a time). 256 slots of 16,384 spread the keys over masters in small steps."""
BUCKET_TAGS = tuple(f"{{r{n}}}" for n in range(BUCKETS))


def bucket_tag(key: str) -> str:
    """The hash tag of ``key``'s bucket, ``{r<n>}``."""
    return BUCKET_TAGS[crc_hqx(key.encode(), 0) % BUCKETS]


class _Cluster(RedisCluster):
    """redis-py's cluster client, which learns the cluster's shape before it routes a
    command.

    redis-py picks a command's node before it initializes: a command issued while the
    client has no map of the slots yet (a new client, or one that dropped its map after
    an error) goes to a random master and is redirected with MOVED. Every fifth
    redirection makes redis-py close all its connections, those in use included, so a
    burst of first commands used to fail some of its own commands. ``initialize`` is a
    no-op once the map is known.

    redis-py also initializes a client again on its next command after ``aclose``: a
    command still in flight when the backend closed (a retry after its connection was
    dropped by the close) opened new connections that nothing would close. Once
    :meth:`shut` has run, a command that would initialize fails instead, as a command on
    a closed single-node client does.
    """

    _shut = False

    async def initialize(self, *args: Any, **kwargs: Any) -> _Cluster:
        if self._shut and self._initialize:  # would (re)open connections
            raise ConnectionError("the cache's Redis Cluster client is closed")
        await super().initialize(*args, **kwargs)
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def shut(self) -> None:
        """Close every connection, for good."""
        self._shut = True
        await self.aclose()


def _cluster_client(url: redis_urls.ClusterURL, options: dict[str, Any]) -> _Cluster:
    """A cluster client from the URL's nodes. A command that fails on a connection is
    tried once more, after the client has learnt the cluster's shape again; then the
    cache fails open. Redirections after a slot moved are followed as always."""
    return _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
        password=url.password,
        max_connections=options["max_connections"],
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
        retry=Retry(NoBackoff(), 1),
        driver_info=options["driver_info"],
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's wait for a free connection
    (a burst waits up to ``timeout`` instead of failing with "Too many connections")."""


def _master_client(
    url: redis_urls.SentinelURL, *, blocking: bool, **connection: Any
) -> tuple[Sentinel, aioredis.Redis]:
    """A client of the current master; ``blocking``: with a blocking connection pool."""
    socket_options = {k: v for k, v in connection.items() if k.startswith("socket_")}
    manager = Sentinel(  # type: ignore[no-untyped-call]
        list(url.sentinels),
        sentinel_kwargs={**socket_options, "password": url.sentinel_password},
        db=url.db,
        password=url.password,
    )
    pool_class = _BlockingSentinelPool if blocking else SentinelConnectionPool
    client = manager.master_for(url.service, connection_pool_class=pool_class, **connection)
    return manager, client


_DRIVER_INFO = DriverInfo()


_TRANSPORT_FILES = (
    "redis/asyncio/connection.py",
    "asyncio/streams.py",
    "asyncio/selector_events.py",
)


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection lost under redis-py rather than a fault of ours.

    A connection closed while a command is being written to it (by the peer, or by
    redis-py's cluster client dropping a failed node's connections) can surface as an
    AttributeError or TypeError from the transport instead of a ConnectionError
    (redis-py issue 4287); seen here when a cluster master is killed under load. Those
    are recognised by where they were raised, so that no error of this package's own
    code is mistaken for an outage.
    """
    if not isinstance(exc, AttributeError | TypeError):
        return False
    frame, tb = "", exc.__traceback__
    while tb is not None:
        frame, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return frame.replace("\\", "/").endswith(_TRANSPORT_FILES)


def uses_hiredis() -> bool:
    """True when redis-py parses replies with hiredis (C) rather than in Python."""
    return "hiredis" in DefaultParser.__name__.lower()


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # We never set decode_responses, so replies are bytes; the typing allows str.
    return value.encode() if isinstance(value, str) else value


def _milliseconds(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, round(ttl * 1000))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
