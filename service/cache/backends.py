"""Where cached bytes live: Redis (shared by every replica) or this process's memory.

Backends store and return bytes under full keys; naming, serialization, TTL rules and
fail-open behaviour belong to :class:`service.cache.manager.CacheManager`. Every method
is a coroutine so the two are interchangeable; the memory backend never awaits.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.connection import DefaultParser

logger = logging.getLogger(__name__)

# What one entry costs beyond its key and value bytes (dict slot, tuple, floats).
_ENTRY_OVERHEAD = 100


class CacheBackend(Protocol):
    """The operations a cache backend offers (all keys are full keys)."""

    name: str

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl: float | None) -> None: ...
    async def set_many(self, items: Mapping[str, bytes], ttl: float | None) -> None: ...
    async def delete(self, keys: Sequence[str]) -> int: ...
    async def delete_prefix(self, prefix: str) -> int: ...
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
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self.size_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
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

    async def delete(self, keys: Sequence[str]) -> int:
        return sum(self._drop(key) for key in keys)

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        return await self.delete(doomed)

    async def aclose(self) -> None:
        self._entries.clear()
        self.size_bytes = 0

    def _drop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.size_bytes -= _cost(key, entry[0])
        return True


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + _ENTRY_OVERHEAD


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
        max_connections: int = 50,
        socket_timeout: float = 0.5,
        pool_timeout: float = 1.0,
    ) -> None:
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
        self.client = aioredis.Redis(connection_pool=self._pool)
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

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()


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
