"""CacheManager: namespaced get/set/delete with TTLs over one backend, failing open.

Every call is awaitable. Keys are ``{prefix}:{namespace}:{key}``; a
namespace is 1-64 characters of ``A-Z a-z 0-9 _ . -`` (no ``:``, no glob characters),
so no key of one namespace can be named, or invalidated, through another.

One serialization, orjson: what the API stores round-trips exactly, datetimes become
RFC 3339 strings and UUIDs strings (so they come back as strings); anything orjson
cannot represent raises :class:`CacheSerializationError` at ``set``, never silently.
``None`` cannot be cached: a ``get`` that returns None means "not cached".

Fail-open: when the backend errs or times out, a read is a miss and a write is skipped;
the error is counted and logged at most once a second. After repeated failures the
circuit breaker skips the backend for a cool-down, then lets one trial through.
Misuse (a bad key, an unserializable value, a closed manager) always raises.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson
from redis.exceptions import RedisClusterException, RedisError

from service import defaults
from service.cache.backends import (
    CacheBackend,
    MemoryBackend,
    Notice,
    RedisBackend,
    lost_connection,
)
from service.cache.breaker import CircuitBreaker
from service.errors import (
    CacheSerializationError,
    CacheUnavailable,
    ClosedError,
    InvalidCacheArgument,
)
from service.logs import RateLimitedLog

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
MAX_KEY_LENGTH = 512
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RedisClusterException: what redis-py's cluster client raises of its own (a slot no
# master serves during a failover, say) is not a RedisError.
_OUTAGE = (RedisError, RedisClusterException, OSError)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since start, and the breaker's state."""

    backend: str
    hits: int
    misses: int
    errors: int
    skipped: int
    """Calls not sent because the breaker was open."""
    breaker: str

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


class CacheManager:
    """A namespaced cache over Redis (or process memory when there is no REDIS_URL).

    Usable on its own::

        async with CacheManager.from_url("redis://127.0.0.1:6379/0") as cache:
            await cache.set("run-42", {"score": 0.9}, namespace="results", ttl=60)
            await cache.get("run-42", namespace="results")
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        prefix: str = defaults.CACHE_PREFIX,
        default_ttl: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not _NAMESPACE.fullmatch(prefix):
            raise InvalidCacheArgument(f"prefix must match {_NAMESPACE.pattern}, got {prefix!r}")
        self.backend = backend
        self.prefix = prefix
        self.default_ttl = None if default_ttl is None else _checked_ttl(default_ttl)
        self.breaker = breaker or CircuitBreaker()
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._asking: dict[str, int] = {}
        """Per key: the get_or_set callers whose read of the cache is under way."""
        self._landed: dict[str, tuple[float, asyncio.Future[Any]]] = {}
        """Per key: the last load that ended while callers were reading (kept until
        they have all decided), and when it ended."""
        self._errors_log = RateLimitedLog(logger, interval=1.0)
        self._hits = self._misses = self._errors = self._skipped = 0
        self._closed = False

    @classmethod
    def from_url(cls, url: str | None, **options: Any) -> CacheManager:
        """Redis at ``url``, or an in-process cache of L1_MAX_BYTES when ``url`` is None."""
        backend: CacheBackend = RedisBackend(url) if url else MemoryBackend(defaults.L1_MAX_BYTES)
        return cls(backend, **options)

    def full_key(self, key: str, namespace: str | None = None) -> str:
        """``{prefix}:{namespace}:{key}`` after checking both parts."""
        namespace = DEFAULT_NAMESPACE if namespace is None else namespace
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise InvalidCacheArgument(
                f"namespace must be 1-64 characters of A-Z a-z 0-9 _ . -, got {namespace!r:.80}"
            )
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise InvalidCacheArgument(
                f"a key must be a string of 1 to {MAX_KEY_LENGTH} characters"
            )
        if _CONTROL.search(key):
            raise InvalidCacheArgument("a key must not hold control characters")
        return f"{self.prefix}:{namespace}:{key}"

    async def get(self, key: str, namespace: str | None = None) -> Any | None:
        """The cached value, or None when absent, expired or the backend is down."""
        full = self.full_key(key, namespace)
        raw = await self._call(self.backend.get(full), None)
        if raw is None:
            self._misses += 1
            return None
        self._hits += 1
        return orjson.loads(raw)

    async def set(
        self, key: str, value: Any, namespace: str | None = None, ttl: float | None = None
    ) -> None:
        """Cache ``value`` for ``ttl`` seconds (default: the manager's ``default_ttl``)."""
        full = self.full_key(key, namespace)
        await self._call(self.backend.set(full, _dumps(value), self._ttl(ttl)), None)

    async def delete(self, key: str, namespace: str | None = None) -> bool:
        """Remove one key; True when it was there."""
        full = self.full_key(key, namespace)
        return bool(await self._call(self.backend.delete([full]), 0))

    async def invalidate(self, key: str, namespace: str | None = None) -> bool:
        """``delete`` that does not fail open: :class:`CacheUnavailable` on an outage."""
        full = self.full_key(key, namespace)
        removed = await self._call(self.backend.delete([full]), None)
        if removed is None:
            raise CacheUnavailable(f"cache {self.backend.name} unreachable: nothing invalidated")
        return bool(removed)

    async def get_many(self, keys: Sequence[str], namespace: str | None = None) -> dict[str, Any]:
        """The cached values of ``keys`` (one round trip); absent keys are left out."""
        fulls = [self.full_key(key, namespace) for key in keys]
        missing: list[bytes | None] = [None] * len(fulls)
        raws = await self._call(self.backend.get_many(fulls), missing)
        found = {key: orjson.loads(raw) for key, raw in zip(keys, raws, strict=True) if raw}
        self._hits += len(found)
        self._misses += len(keys) - len(found)
        return found

    async def set_many(
        self, values: Mapping[str, Any], namespace: str | None = None, ttl: float | None = None
    ) -> None:
        """Cache several values in one pipelined round trip."""
        items = {self.full_key(key, namespace): _dumps(value) for key, value in values.items()}
        await self._call(self.backend.set_many(items, self._ttl(ttl)), None)

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        namespace: str | None = None,
        ttl: float | None = None,
    ) -> T:
        """The cached value, or ``await loader()`` cached and returned.

        Concurrent callers that miss on the same key share one ``loader()`` call in this
        process (single flight). A loader error reaches every waiter and caches nothing;
        a None result is returned but not cached.

        A caller whose read began before a load of its key ended, but whose miss came
        back after (a slow cache), takes that load's value: its read overlapped the
        load's write, and starting a second load there would call ``loader`` twice.
        """
        full = self.full_key(key, namespace)
        asked = time.monotonic()
        self._asking[full] = self._asking.get(full, 0) + 1
        try:
            cached = await self.get(key, namespace)
        finally:
            landed = self._done_asking(full)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        if landed is not None and landed[0] >= asked:
            done = landed[1]
            if not done.cancelled() and done.exception() is None:
                return done.result()  # type: ignore[no-any-return]
        flight = self._flights.get(full)
        if flight is None:
            flight = asyncio.ensure_future(self._load(key, loader, namespace, ttl))
            self._flights[full] = flight
            flight.add_done_callback(lambda done: self._land(full, done))
        # Shielded: one waiter giving up must not cancel the load the others wait for.
        return await asyncio.shield(flight)

    async def get_raw(self, key: str, namespace: str | None = None) -> bytes | None:
        """The stored bytes as they are (no deserialization); None on a miss or outage."""
        raw, _ = await self.lookup_raw(key, namespace)
        return raw

    async def lookup_raw(self, key: str, namespace: str | None = None) -> tuple[bytes | None, bool]:
        """:meth:`get_raw`, and whether the backend was reached (False on an outage or
        with the breaker open), so a caller can skip writing back to a backend that is
        not answering."""
        full = self.full_key(key, namespace)
        raw = await self._call(self.backend.get(full), _UNREACHED)
        if raw is _UNREACHED:
            self._misses += 1
            return None, False
        if raw is None:
            self._misses += 1
        else:
            self._hits += 1
        return raw, True

    async def set_if_newer(
        self,
        key: str,
        value: bytes,
        namespace: str | None = None,
        ttl: float | None = None,
        notify: Notice | None = None,
    ) -> bool | None:
        """Store versioned bytes unless a higher version is stored (see the backends).

        True when written, False when a newer version kept its place, None when the
        backend could not be reached (nothing is known about what it holds).
        ``notify`` is a pub/sub ``(channel, message)`` published in the same step.
        """
        full = self.full_key(key, namespace)
        operation = self.backend.set_if_newer(full, value, self._ttl(ttl), notify)
        return await self._call(operation, None)

    async def publish(self, channel: str, message: str) -> bool:
        """Publish to the other replicas (a no-op in memory); False on an outage."""
        return await self._call(_publish(self.backend, channel, message), False)

    async def invalidate_namespace(self, namespace: str) -> int:
        """Remove every key of ``namespace`` (SCAN + UNLINK in batches); return how many.

        Unlike reads and writes this does not fail open: when the backend cannot be
        reached it raises :class:`CacheUnavailable`, because the caller must know.
        """
        prefix = self.full_key("x", namespace)[:-1]
        removed = await self._call(self.backend.delete_prefix(prefix), None)
        if removed is None:
            raise CacheUnavailable(f"cache {self.backend.name} unreachable: nothing invalidated")
        return int(removed)

    async def backend_info(self) -> dict[str, int | str | bool]:
        """What the backend reports of itself; raises :class:`CacheUnavailable` on an outage."""
        info = await self._call(self.backend.info(), None)
        if info is None:
            raise CacheUnavailable(f"cache {self.backend.name} unreachable")
        return info

    def stats(self) -> CacheStats:
        return CacheStats(
            backend=self.backend.name,
            hits=self._hits,
            misses=self._misses,
            errors=self._errors,
            skipped=self._skipped,
            breaker=self.breaker.state.value,
        )

    async def aclose(self) -> None:
        """Close the backend's connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _done_asking(self, full: str) -> tuple[float, asyncio.Future[Any]] | None:
        """One caller's read of ``full`` is over: the load that landed meanwhile, if any
        (forgotten once no caller is reading)."""
        landed = self._landed.get(full)
        left = self._asking[full] - 1
        if left:
            self._asking[full] = left
        else:
            del self._asking[full]
            self._landed.pop(full, None)
        return landed

    def _land(self, full: str, flight: asyncio.Future[Any]) -> None:
        self._flights.pop(full, None)
        if full in self._asking:  # callers whose reads may miss what it just wrote
            self._landed[full] = (time.monotonic(), flight)

    async def _load(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        namespace: str | None,
        ttl: float | None,
    ) -> Any:
        value = await loader()
        if value is not None:
            await self.set(key, value, namespace, ttl)
        return value

    async def _call(self, operation: Awaitable[T], fallback: T) -> T:
        """Run a backend call through the breaker; on an outage, count it and fall back."""
        if self._closed:
            _discard(operation)
            raise ClosedError("the cache manager is closed")
        if not self.breaker.allow():
            _discard(operation)
            self._skipped += 1
            return fallback
        try:
            result = await operation
        except (*_OUTAGE, AttributeError, TypeError) as exc:
            if not isinstance(exc, _OUTAGE) and not lost_connection(exc):
                self.breaker.record_abandoned()
                raise
            self._errors += 1
            self.breaker.record_failure()
            self._errors_log.warning(
                "outage",
                "cache %s failed, serving without it: %r",
                self.backend.name,
                exc,
            )
            return fallback
        except BaseException:
            self.breaker.record_abandoned()
            raise
        self.breaker.record_success()
        return result

    def _ttl(self, ttl: float | None) -> float | None:
        return self.default_ttl if ttl is None else _checked_ttl(ttl)


_UNREACHED: Any = object()
"""What a lookup returns in place of a value when the backend was not reached."""


def _checked_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise InvalidCacheArgument(f"ttl must be a number of seconds, got {ttl!r}")
    if ttl <= 0:
        raise InvalidCacheArgument(f"ttl must be more than 0 seconds, got {ttl}")
    return float(ttl)


def _dumps(value: Any) -> bytes:
    if value is None:
        raise InvalidCacheArgument("None cannot be cached: a get() of None means a miss")
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise CacheSerializationError(f"cannot serialize for the cache: {exc}") from None


async def _publish(backend: CacheBackend, channel: str, message: str) -> bool:
    await backend.publish(channel, message)
    return True


def _discard(operation: Awaitable[Any]) -> None:
    close = getattr(operation, "close", None)
    if close is not None:
        close()  # a coroutine never awaited would warn
