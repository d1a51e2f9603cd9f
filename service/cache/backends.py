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

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, DefaultParser
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo

from service import defaults, sentinel
from service.errors import InvalidArgument

logger = logging.getLogger(__name__)

# What one entry costs beyond its key and value bytes (dict slot, tuple, floats).
_ENTRY_OVERHEAD = 100

Notice = tuple[str, str]
"""A pub/sub ``(channel, message)`` that a backend shared by replicas publishes with a write."""

# Compare and set in one atomic step, publishing the notice in the same round trip.
# GETRANGE reads only the head of the stored value, never a whole document. The same
# version may be written again (its content never changes): that is how a refresh
# renews an entry's lifetime.
_SET_IF_NEWER = """
local head = redis.call('GETRANGE', KEYS[1], 0, 24)
local stored = tonumber(string.match(head, '^(%d+) '))
local written = 0
if stored == nil or stored == 0 or tonumber(ARGV[1]) >= stored then
  if ARGV[3] == '0' then
    redis.call('SET', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  written = 1
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return written
"""


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
        self._sentinel_url = sentinel.parse(url) if sentinel.is_sentinel_url(url) else None
        self._sentinel: Sentinel | None = None
        if self._sentinel_url is not None:
            self._sentinel, self.client = _master_client(
                self._sentinel_url, blocking=True, **options
            )
            self._pool = self.client.connection_pool
        else:
            self._pool = aioredis.BlockingConnectionPool.from_url(url, **options)
            self.client = aioredis.Redis(connection_pool=self._pool)
        self.replicas_to_wait_for = 1 if self._sentinel_url is not None else 0
        """Replicas that must have a versioned write before it counts as reached: one
        behind Sentinel, whose failover promotes a replica (asynchronous replication
        may not have carried the write there yet)."""
        self._set_if_newer = self.client.register_script(_SET_IF_NEWER)
        self.hiredis = uses_hiredis()
        if not self.hiredis:
            logger.warning("hiredis is not in use: Redis replies are parsed in pure Python")

    async def get(self, key: str) -> bytes | None:
        return _as_bytes(await self.client.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return [_as_bytes(value) for value in await self.client.mget(keys)]

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        await self.client.set(key, value, px=_milliseconds(ttl))

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None) -> None:
        if not items:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(key, value, px=_milliseconds(ttl))
            await pipe.execute()

    async def set_if_newer(
        self, key: str, value: bytes, ttl: float | None, notify: Notice | None = None
    ) -> bool | None:
        """Compare and set atomically (a Lua script), publishing ``notify`` with it.

        With :attr:`replicas_to_wait_for`, ``WAIT`` follows in the same round trip; a
        write no replica confirmed within half the socket timeout returns None, as if
        Redis had not been reached: a failover could promote a replica without it.
        """
        channel, message = notify or ("", "")
        version = leading_version(value)
        if version is None:
            raise InvalidArgument("a versioned value starts with its version and a space")
        args: list[bytes | int | str] = [version, value, _milliseconds(ttl) or 0, channel, message]
        if not self.replicas_to_wait_for:
            return bool(await self._set_if_newer(keys=[key], args=args))
        async with self.client.pipeline(transaction=False) as pipe:
            await self._set_if_newer(keys=[key], args=args, client=pipe)
            pipe.execute_command(
                "WAIT", self.replicas_to_wait_for, max(1, int(self._socket_timeout * 500))
            )
            written, replicas = await pipe.execute()
        if written and int(replicas) < self.replicas_to_wait_for:
            return None
        return bool(written)

    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        removed: int = await self.client.unlink(*keys)
        return removed

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN and UNLINK in batches: never KEYS, never one long blocking command."""
        removed = 0
        batch: list[str | bytes] = []
        async for key in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            removed += await self.client.unlink(*batch)
        return removed

    async def publish(self, channel: str, message: str) -> None:
        await self.client.publish(channel, message)

    async def info(self) -> dict[str, int | str | bool]:
        """What Redis says of itself: version, memory, evictions, its own hit counts."""
        server = await self.client.info("server")
        memory = await self.client.info("memory")
        stats = await self.client.info("stats")
        return {
            "redis_version": str(server.get("redis_version", "")),
            "hiredis": self.hiredis,
            "keys": int(await self.client.dbsize()),
            "used_memory": int(memory.get("used_memory", 0)),
            "maxmemory": int(memory.get("maxmemory", 0)),
            "maxmemory_policy": str(memory.get("maxmemory_policy", "")),
            "evicted_keys": int(stats.get("evicted_keys", 0)),
            "keyspace_hits": int(stats.get("keyspace_hits", 0)),
            "keyspace_misses": int(stats.get("keyspace_misses", 0)),
        }

    def subscriber(self) -> aioredis.Redis:
        """A client of its own for one long-lived pub/sub connection.

        It does not retry: a lost connection must reach the listener, which has to
        assume it missed messages. Reads are bounded by the listener, not by the
        short socket timeout meant for commands.
        """
        options: dict[str, Any] = {
            "socket_connect_timeout": self._socket_timeout,
            "retry": Retry(NoBackoff(), 0),
            "driver_info": _DRIVER_INFO,
        }
        if self._sentinel_url is not None:
            return _master_client(self._sentinel_url, blocking=False, **options)[1]
        return aioredis.Redis.from_url(self._url, **options)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()
        if self._sentinel is not None:
            for node in self._sentinel.sentinels:
                await node.aclose()


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's wait for a free connection
    (a burst waits up to ``timeout`` instead of failing with "Too many connections")."""


def _master_client(
    url: sentinel.SentinelURL, *, blocking: bool, **connection: Any
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
