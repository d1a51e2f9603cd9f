"""LocalCache: the in-process tier (L1), an LRU of objects bounded by bytes, with TTLs.

Unlike :class:`~service.cache.backends.MemoryBackend`, which stores the same bytes a
Redis would, this one holds live objects (a result's ready responses), so a hit costs
one dictionary lookup and nothing is decoded. Every method is synchronous: the hot path
must not yield between looking an entry up and using it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from service.errors import InvalidArgument

V = TypeVar("V")

ENTRY_OVERHEAD = 200
"""What one entry costs beyond the sizes it is charged (slot, key, list, objects)."""


class _Entry(Generic[V]):
    __slots__ = ("expires_at", "size", "value")

    def __init__(self, value: V, expires_at: float | None, size: int) -> None:
        self.value = value
        self.expires_at = expires_at
        self.size = size


class LocalCache(Generic[V]):
    """Values under string keys, each charged a size; least recently used go first.

    A value whose size alone exceeds ``max_bytes`` is not stored. Entries past their
    TTL are dropped when touched. :meth:`charge` lets a value that grows after it was
    stored (a result gaining an encoded body) pay for what it gained.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes < 0:
            raise InvalidArgument("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self.size_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        """The live value under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at = entry.expires_at
        if expires_at is not None and self._clock() >= expires_at:
            self.discard(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: str, value: V, size: int, ttl: float | None) -> bool:
        """Store ``value`` charged ``size`` bytes for ``ttl`` seconds; False when too big."""
        self.discard(key)
        cost = size + len(key) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return False
        expires_at = None if ttl is None else self._clock() + ttl
        self._entries[key] = _Entry(value, expires_at, cost)
        self.size_bytes += cost
        self._evict()
        return True

    def charge(self, key: str, value: V, extra: int) -> None:
        """Add ``extra`` bytes to the entry under ``key``, if it still holds ``value``."""
        entry = self._entries.get(key)
        if entry is None or entry.value is not value:
            return
        entry.size += extra
        self.size_bytes += extra
        self._evict()

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size_bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self.size_bytes = 0

    def _evict(self) -> None:
        while self.size_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self.discard(oldest)
            self.evictions += 1
