"""ResultCache: results read through two cache tiers, never older than an acknowledged write.

Tiers: an in-process LRU (L1, bounded by L1_MAX_BYTES and L1_TTL) in front of the
shared backend (Redis, or process memory without REDIS_URL), in front of the store.

What is promised, and how:

* **A hit does no JSON work.** Shared entries hold the stored JSON text behind a short
  header (:mod:`service.cache.entry`); the in-process tier holds each version as a
  :class:`~service.cache.ready.ReadyResult`, the responses a read sends, built once.
* **One database query per key per process under a stampede.** Everything after an L1
  miss (the Redis lookup and the database read) runs once per key as a *flight* that
  concurrent callers share.
* **Never an older version after a write is acknowledged here.** A write commits, then
  stores its version in the shared tier with a compare-and-set that only a higher
  version passes, then ends every flight in progress for the id and drops it from L1,
  and only then returns. A flight that a write ended fills nothing, so a read that began
  before the write cannot put its older answer back; flights started afterwards find
  the new version in the shared tier. Deletes store a tombstone version the same way.
* **Other replicas drop their L1 entry** when the write's pub/sub notice arrives (one
  round trip with the compare-and-set). Until then they may serve the previous version;
  if notices cannot arrive, for at most L1_TTL.
* **Encoded bytes ready for hot reads.** A version's body in each coding clients ask
  for is compressed once and kept with it in L1, charged to L1_MAX_BYTES.
* **Compressed once for every replica.** A shared entry holds the body in zstd
  (:class:`SharedZstd`, the level responses use), made by the replica that fills it:
  Redis holds about a tenth of the bytes, and a replica that loads the entry has its
  ``zstd`` representation without compressing anything.
* **Fail-open.** With Redis unreachable, reads go to the store.
* **Hot keys never miss on expiry.** A shared entry read in the last part of its
  freshness (the early window: a tenth of the TTL, and at least two L1 TTLs, so that
  the L1 refills of a hot key land in it) is refreshed from the store in the
  background, once per key per process, while reads go on being served. TTLs get up to
  10% of jitter, so that keys written together do not expire together.
* **Stale if error.** With ``stale_if_error`` seconds, a shared entry outlives its
  freshness by that long; a read that finds it expired and then cannot reach the store
  is answered with it (source ``stale``) instead of failing.
* **No acknowledged write hidden by a stalled Redis, on any replica, across restarts.**
  A write whose version could not reach Redis is noted in the store (the
  ``unsynced_results`` table) before it is acknowledged; if even that fails, the write
  is not acknowledged (the caller gets the store's error and may retry). Every replica
  reads the notes when it starts, before it trusts Redis, and again every
  UNSYNCED_POLL seconds: a noted id is read from the store, never from Redis (which may
  hold, or get back, the old version), and leaves L1. Any replica repairs Redis once it
  answers again (the current version, compare-and-set, with a notice) and only then
  drops the note. So another replica serves a version older than an acknowledged
  write for at most UNSYNCED_POLL seconds after a failed Redis write, and at most
  L1_TTL after a successful one whose notice it missed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, Self

from service import defaults
from service.cache import entry
from service.cache.backends import MemoryBackend, Notice, RedisBackend
from service.cache.invalidation import ALL, InvalidationListener
from service.cache.local import LocalCache
from service.cache.manager import CacheManager
from service.cache.ready import THREAD_MINIMUM_SIZE, ReadyResult
from service.core.codings import DEFAULT_LEVELS, ZSTD, check_level, compress
from service.errors import CacheUnavailable, ConfigurationError, DatabaseError, InvalidArgument
from service.logs import RateLimitedLog
from service.model import (
    Absent,
    IfMatch,
    ResultMeta,
    StoredResult,
    WriteOutcome,
    encode_document,
    validate_analysis_id,
)

logger = logging.getLogger(__name__)


class ResultSource(Protocol):
    """Where results are kept: what the cache reads through and writes through.

    :class:`service.db.result_store.ResultStore` is the one the service uses; the cache
    needs only these calls, so it does not depend on the database layer. The notes are
    the durable list of writes that could not reach the shared cache, kept per cache
    namespace (``cache``).
    """

    async def read(self, analysis_id: str) -> StoredResult | Absent: ...
    async def put(
        self,
        analysis_id: str,
        document: Mapping[str, Any] | bytes,
        *,
        if_match: IfMatch = None,
        if_none_match: bool = False,
    ) -> WriteOutcome: ...
    async def delete(self, analysis_id: str, *, if_match: IfMatch = None) -> ResultMeta: ...
    async def note_unsynced(self, cache: str, analysis_id: str, version: int) -> None: ...
    async def unsynced(self, cache: str, limit: int) -> tuple[tuple[str, int], ...]: ...
    async def forget_unsynced(self, cache: str, analysis_id: str, version: int) -> bool: ...
    async def forget_unsynced_before(self, cache: str, moment: datetime) -> int: ...
    async def database_now(self) -> datetime: ...


NAMESPACE = "results"
ABSENT_TTL = 60.0
"""Seconds an id that was never written stays cached as absent (bounds what probing costs)."""
MAX_UNSYNCED = 10_000
"""Noted ids followed one by one; beyond this many the whole shared namespace is
distrusted, then emptied, instead."""
UNSYNCED_POLL = 1.0
"""Seconds between two reads of the store's notes of unsynced writes: the bound on how
long another replica may serve a version that a write could not put into Redis."""
MAX_WRITTEN = 100_000
"""Ids whose latest local write is remembered (an LRU), to refuse older shared entries."""
REPAIR_INTERVAL = 1.0
TTL_JITTER = 0.1
"""Up to this share of a default TTL is taken off at random (see the module docstring)."""
EARLY_SHARE = 0.1
"""The early window's share of the TTL (see the module docstring)."""

Source = Literal["l1", "shared", "database", "stale"]


@dataclass(frozen=True, slots=True)
class SharedZstd:
    """How shared entries are compressed: zstd at ``level`` (give it the level the
    responses use, so the stored bytes are the ``zstd`` representation), bodies under
    ``minimum_size`` bytes left as they are."""

    level: int = DEFAULT_LEVELS[ZSTD]
    minimum_size: int = defaults.COMPRESSION_MIN_SIZE

    def __post_init__(self) -> None:
        check_level(ZSTD, self.level)
        if self.minimum_size < 0:
            raise InvalidArgument("minimum_size must be >= 0")


L1 = LocalCache[ReadyResult | Absent]
"""The in-process tier: each id's current version, ready to send, or its absence."""


@dataclass(slots=True)
class _Unsynced:
    """An id whose shared entry may be older than ``version``."""

    version: int
    durable: bool
    """Noted in the store (so every replica, and a restart, knows) or only here."""
    since: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class CachedRead:
    """What :meth:`ResultCache.get` found, and where."""

    found: StoredResult | Absent
    source: Source
    ready: ReadyResult | None = None
    """The version as L1 holds it (None when there is no L1 or it was not kept)."""

    @property
    def hit(self) -> bool:
        return self.source != "database" and self.source != "stale"


@dataclass(frozen=True, slots=True)
class ResultCacheStats:
    """Counters since start. ``l1_hits + shared_hits + loads`` is every read-through."""

    l1_hits: int
    shared_hits: int
    loads: int
    """Reads that went to the database (one per flight)."""
    joined: int
    """Reads that waited on another caller's flight instead of starting one."""
    joined_hits: int
    """Of those, the ones whose flight found the result in the shared tier."""
    refreshes: int
    """Shared entries refreshed from the store before they expired."""
    stale: int
    """Reads answered with an expired entry because the store failed (stale-if-error)."""
    l1_entries: int
    l1_bytes: int
    l1_max_bytes: int
    l1_evictions: int
    unsynced: int
    """Ids whose latest version has yet to reach Redis."""
    listener: str
    """``connected``, ``disconnected``, or ``none`` without Redis or L1."""

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


class ResultCache:
    """Analysis results cached by version.

    From your own asyncio code, with or without a database behind it::

        async with ResultCache(CacheManager.from_url("redis://127.0.0.1:6379/0")) as results:
            await results.cache_analysis_result("run-42", {"score": 0.9})
            await results.get_analysis_result("run-42")     # {"score": 0.9}

    With a :class:`ResultSource` (the service's is
    :class:`~service.db.result_store.ResultStore`) it also reads through (:meth:`get`)
    and writes through (:meth:`put`, :meth:`delete`); that is what the HTTP API uses.
    """

    def __init__(
        self,
        cache: CacheManager | None = None,
        store: ResultSource | None = None,
        *,
        ttl: float | None = None,
        l1: L1 | None = None,
        l1_ttl: float = defaults.L1_TTL,
        stale_if_error: float = 0.0,
        zstd: SharedZstd | None = SharedZstd(),
    ) -> None:
        if stale_if_error < 0:
            raise InvalidArgument("stale_if_error must be >= 0 seconds")
        self._owns_cache = cache is None
        self.cache = cache or CacheManager.from_url(None, default_ttl=defaults.RESULT_TTL)
        self.store = store
        self.ttl = ttl if ttl is not None else (self.cache.default_ttl or defaults.RESULT_TTL)
        self.l1 = l1
        self.l1_ttl = l1_ttl
        self.stale_if_error = stale_if_error
        self.zstd = zstd
        """How shared entries are compressed (None: they hold the body as it is)."""
        self.early = min(self.ttl / 2, max(self.ttl * EARLY_SHARE, 2 * l1_ttl))
        """Seconds before a shared entry's freshness ends when a read refreshes it."""
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self.channel = f"{self.cache.prefix}:invalidate:{NAMESPACE}"
        self.shared_namespace = f"{self.cache.prefix}:{NAMESPACE}"
        """Names this cache's keys in the store's notes of unsynced writes."""
        # Notices say who sent them, so a replica skips its own (it already acted).
        self._sender = uuid.uuid4().hex[:12]
        self._flights: dict[str, asyncio.Task[CachedRead]] = {}
        self._written: OrderedDict[str, int] = OrderedDict()
        self._unsynced: dict[str, _Unsynced] = {}
        self._unsynced_overflow = False
        self._notes_unknown = False
        """True from start() until the store's notes were read once: Redis is not trusted."""
        self._repair: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._notes_log = RateLimitedLog(logger, interval=5.0)
        self._listener: InvalidationListener | None = None
        backend = self.cache.backend
        self._redis_behind = isinstance(backend, RedisBackend)
        """The shared tier is Redis: other processes share it, and it can fail."""
        self._shared_holds = not (isinstance(backend, MemoryBackend) and backend.max_bytes == 0)
        """False when the shared tier can hold nothing (in process, of size 0: the service
        with its cache turned off). Reads then skip it, and no entry is compressed or
        encoded for it."""
        if l1 is not None and isinstance(backend, RedisBackend):
            self._listener = InvalidationListener(
                backend, self.channel, self._on_notice, self._drop_everything_local
            )
        self._l1_hits = self._shared_hits = self._loads = self._joined = self._joined_hits = 0
        self._refreshes = self._stale = 0

    @property
    def listener(self) -> InvalidationListener | None:
        return self._listener

    async def start(self, wait: float = 1.0) -> None:
        """Read the store's notes of unsynced writes, then follow them and listen for
        other replicas' writes (waits up to ``wait`` s for the listener).

        Until the notes have been read once, reads do not trust Redis.
        """
        if self.store is not None and self._redis_behind and self._follow is None:
            self._notes_unknown = True
            await self._read_notes()
            self._follow = asyncio.ensure_future(self._follow_notes())
        if self._listener is not None:
            self._listener.start()
            if not await self._listener.wait_connected(wait):
                logger.warning("cache invalidation listener not connected yet; L1_TTL bounds L1")

    async def aclose(self) -> None:
        """Stop the listener and repairs; close the CacheManager if this cache made it."""
        if self._listener is not None:
            await self._listener.aclose()
        for task in (self._repair, self._follow, *self._refreshing.values()):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._refreshing.clear()
        self._repair = self._follow = None
        if self._owns_cache:
            await self.cache.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # The specification's interface: the cache alone, no database.

    async def get_analysis_result(self, analysis_id: str) -> dict[str, Any] | None:
        """The cached document, or None when not cached (or cached as absent)."""
        validate_analysis_id(analysis_id)
        local = self._l1_get(analysis_id)
        found: StoredResult | Absent | None
        if isinstance(local, ReadyResult):
            found = local.stored
        elif local is None:
            shared = await _decode_off_loop(
                analysis_id, await self.cache.get_raw(analysis_id, NAMESPACE)
            )
            found = None if shared is None else shared.found
        else:
            found = local
        return found.document() if isinstance(found, StoredResult) else None

    async def cache_analysis_result(
        self,
        analysis_id: str,
        result: Mapping[str, Any],
        ttl: float | None = None,
        *,
        version: int | None = None,
    ) -> bool:
        """Cache ``result`` for ``ttl`` seconds (default RESULT_TTL); True when stored.

        With ``version``, a cached higher version is kept and False returned. Without,
        the entry is version 0: it replaces only another version-0 entry, and the
        read-through never serves it as a stored version.
        """
        validate_analysis_id(analysis_id)
        if version is not None and (isinstance(version, bool) or version < 1):
            raise InvalidArgument(f"version must be a whole number >= 1, got {version!r}")
        now = datetime.now(UTC)
        meta = ResultMeta(analysis_id, version or 0, now, now)
        document = StoredResult(meta, encode_document(result).encode())
        return await self._write_through(document, ttl) is True

    # Read-through and write-through, for the HTTP API.

    async def get(self, analysis_id: str) -> CachedRead:
        """The current result (or its absence): from L1, the shared tier, or the store."""
        validate_analysis_id(analysis_id)
        local = self._l1_get(analysis_id)
        if local is not None:
            self._l1_hits += 1
            if isinstance(local, ReadyResult):
                return CachedRead(local.stored, "l1", local)
            return CachedRead(local, "l1")
        flight = self._flights.get(analysis_id)
        if flight is None:
            flight = asyncio.ensure_future(self._load(analysis_id))
            self._flights[analysis_id] = flight
            flight.add_done_callback(lambda done: self._land(analysis_id, done))
            # Shielded: a caller that gives up must not cancel the flight others wait on.
            return await asyncio.shield(flight)
        self._joined += 1
        read = await asyncio.shield(flight)
        self._joined_hits += read.hit
        return read

    async def put(
        self,
        analysis_id: str,
        document: Mapping[str, Any] | bytes,
        *,
        if_match: IfMatch = None,
        if_none_match: bool = False,
    ) -> WriteOutcome:
        """:meth:`ResultStore.put`, then the new version into the cache before returning."""
        outcome = await self._store().put(
            analysis_id, document, if_match=if_match, if_none_match=if_none_match
        )
        await self._write_through(outcome.result, None)
        return outcome

    async def delete(self, analysis_id: str, *, if_match: IfMatch = None) -> ResultMeta:
        """:meth:`ResultStore.delete`, then a tombstone into the cache before returning."""
        meta = await self._store().delete(analysis_id, if_match=if_match)
        await self._write_through(Absent(analysis_id, meta.version), None)
        return meta

    async def invalidate(self, analysis_id: str | None = None) -> int:
        """Drop one id (or, with None, the whole namespace) from every tier and replica.

        Returns how many shared entries were removed; raises :class:`CacheUnavailable`
        when the shared tier cannot be reached. Unlike a write this leaves no version
        behind, so use it to recover from trouble, not in the write path.
        """
        if analysis_id is None:
            removed = await self.cache.invalidate_namespace(NAMESPACE)
            self._drop_everything_local()
            await self.cache.publish(self.channel, self._notice(ALL))
            return removed
        validate_analysis_id(analysis_id)
        removed = int(await self.cache.invalidate(analysis_id, NAMESPACE))
        self._drop_local(analysis_id)
        await self.cache.publish(self.channel, self._notice(analysis_id))
        return removed

    def ready(self, analysis_id: str) -> ReadyResult | None:
        """The current version as L1 holds it, or None; counts nothing (see
        :meth:`count_l1_hit`). For the hit path: no validation, no await, so an id that
        could not have been stored simply is not found."""
        local = None if self.l1 is None else self.l1.get(analysis_id)
        return local if isinstance(local, ReadyResult) else None

    def count_l1_hit(self) -> None:
        """Count a read answered from :meth:`ready` outside :meth:`get`."""
        self._l1_hits += 1

    def stats(self) -> ResultCacheStats:
        l1 = self.l1
        if self._listener is None:
            listener = "none"
        else:
            listener = "connected" if self._listener.connected else "disconnected"
        return ResultCacheStats(
            l1_hits=self._l1_hits,
            shared_hits=self._shared_hits,
            loads=self._loads,
            joined=self._joined,
            joined_hits=self._joined_hits,
            refreshes=self._refreshes,
            stale=self._stale,
            l1_entries=len(l1) if l1 is not None else 0,
            l1_bytes=l1.size_bytes if l1 is not None else 0,
            l1_max_bytes=l1.max_bytes if l1 is not None else 0,
            l1_evictions=l1.evictions if l1 is not None else 0,
            unsynced=len(self._unsynced),
            listener=listener,
        )

    # Internals.

    async def _load(self, analysis_id: str) -> CachedRead:
        """One flight: the shared tier, else the store and a guarded fill."""
        me = asyncio.current_task()
        reached = True
        expired: StoredResult | Absent | None = None
        if self._shared_holds and not self._is_unsynced(analysis_id):
            raw, reached = await self.cache.lookup_raw(analysis_id, NAMESPACE)
            shared = await _decode_off_loop(analysis_id, raw)
            found = None if shared is None else shared.found
            if shared is not None and found is not None and self._current(found):
                fresh_until = shared.fresh_until
                left = math.inf if fresh_until is None else fresh_until - time.time()
                if left > 0:
                    self._shared_hits += 1
                    if left < self.early:
                        self._refresh_soon(analysis_id, found)
                    ready = None
                    if self._flights.get(analysis_id) is me:
                        ready = self._l1_set(analysis_id, found, shared.zstd)
                    return CachedRead(found, "shared", ready)
                expired = found
        try:
            found = await self._store().read(analysis_id)
        except DatabaseError:
            if isinstance(expired, StoredResult):
                self._stale += 1
                return CachedRead(expired, "stale")
            raise
        self._loads += 1
        ready = None
        if self._flights.get(analysis_id) is me:  # no write has ended this flight
            frame = await self._compressed(found) if self._shared_holds else None
            if reached:
                # Not when the lookup just failed: a second timeout would only add to
                # this read's wait, and the entry is filled by a later read anyway.
                await self._fill(found, frame=frame)
            if self._flights.get(analysis_id) is me:
                ready = self._l1_set(analysis_id, found, frame)
        return CachedRead(found, "database", ready)

    def _land(self, analysis_id: str, flight: asyncio.Task[CachedRead]) -> None:
        if self._flights.get(analysis_id) is flight:
            del self._flights[analysis_id]
        if not flight.cancelled():
            flight.exception()  # retrieved here, so a flight nobody awaits stays quiet

    def _current(self, found: StoredResult | Absent) -> bool:
        """May a shared entry be served? Not version 0 with a document (cached by hand),
        and not older than a write this process made: the compare-and-set cannot stop an
        older write landing after a newer entry was evicted, but this check can."""
        if isinstance(found, StoredResult) and found.meta.version == 0:
            return False
        return _version(found) >= self._written.get(_id_of(found), 0)

    async def _write_through(self, found: StoredResult | Absent, ttl: float | None) -> bool | None:
        """Shared tier (compare-and-set plus notice), then end local flights and L1 entry."""
        analysis_id = _id_of(found)
        version = _version(found)
        newest = self._written.get(analysis_id, 0)
        if version and version < newest:
            # A newer write from here is being published: nothing to add to the shared
            # tier, but that write may not have dropped the local copies yet, and this one
            # must not be acknowledged while L1 can still serve what preceded it.
            self._drop_local(analysis_id)
            return False
        if version:
            self._written[analysis_id] = version
            self._written.move_to_end(analysis_id)
            if len(self._written) > MAX_WRITTEN:
                self._written.popitem(last=False)
        written = await self._fill(found, ttl, self._notice_for(analysis_id))
        self._drop_local(analysis_id)
        if written is None and self.store is not None and version:
            # Redis may still hold (or get back) an older version: read this id from
            # the store until Redis is repaired, here at once and, through the note,
            # on every replica and after a restart. No note, no acknowledgment.
            mark = self._mark_unsynced(analysis_id, version)
            await self.store.note_unsynced(self.shared_namespace, analysis_id, version)
            mark.durable = True
        return written

    def _ttl_for(self, found: StoredResult | Absent, ttl: float | None) -> float:
        """``ttl`` as given, or the default TTL less up to TTL_JITTER of it."""
        if ttl is None:
            ttl = self.ttl * (1 - TTL_JITTER * random.random())  # noqa: S311 (not a secret)
        if isinstance(found, Absent) and found.version == 0:
            return min(ttl, ABSENT_TTL)
        return ttl

    async def _fill(
        self,
        found: StoredResult | Absent,
        ttl: float | None = None,
        notice: Notice | None = None,
        *,
        frame: tuple[int, bytes] | Literal[False] | None = False,
    ) -> bool | None:
        """Compare-and-set ``found`` into the shared tier: fresh for its TTL, kept
        ``stale_if_error`` seconds longer (a result; an absence is not served stale).
        ``frame`` is what :meth:`_compressed` gave, if the caller has it already.
        A shared tier that holds nothing accepts it without the work."""
        if not self._shared_holds:
            return True
        fresh = self._ttl_for(found, ttl)
        kept = fresh + self.stale_if_error if isinstance(found, StoredResult) else fresh
        if frame is False:
            frame = await self._compressed(found)
        value = entry.encode(found, time.time() + fresh, frame)
        return await self.cache.set_if_newer(_id_of(found), value, NAMESPACE, kept, notice)

    async def _compressed(self, found: StoredResult | Absent) -> tuple[int, bytes] | None:
        """``(level, frame)``: the body as a shared entry holds it, or None to hold it as
        it is (no compression set, a small body, or one that does not shrink)."""
        zstd = self.zstd
        if zstd is None or not isinstance(found, StoredResult):
            return None
        body = found.body
        if len(body) < zstd.minimum_size:
            return None
        if len(body) < THREAD_MINIMUM_SIZE:
            frame = compress(ZSTD, zstd.level, body)
        else:
            frame = await asyncio.to_thread(compress, ZSTD, zstd.level, body)
        return (zstd.level, frame) if len(frame) < len(body) else None

    def _refresh_soon(self, analysis_id: str, found: StoredResult | Absent) -> None:
        """Refresh ``analysis_id``'s shared entry in the background, unless under way."""
        if analysis_id not in self._refreshing:
            task = asyncio.ensure_future(self._refresh(analysis_id, _version(found)))
            self._refreshing[analysis_id] = task
            task.add_done_callback(lambda _: self._refreshing.pop(analysis_id, None))

    async def _refresh(self, analysis_id: str, cached_version: int) -> None:
        """Read the id from the store and put it into the shared tier (compare-and-set:
        a write that lands meanwhile keeps its newer version). Other replicas are told
        only when the version changed."""
        try:
            found = await self._store().read(analysis_id)
            changed = _version(found) != cached_version
            notice = self._notice_for(analysis_id) if changed else None
            if await self._fill(found, notice=notice) is not None:
                self._refreshes += 1
            if changed:
                self._drop_local(analysis_id)
        except (DatabaseError, CacheUnavailable) as exc:
            self._notes_log.warning("refresh", "early refresh deferred: %r", exc)

    def _notice(self, what: str) -> str:
        return f"{self._sender} {what}"

    def _notice_for(self, analysis_id: str) -> Notice | None:
        """The pub/sub notice of a write, whenever the shared tier is shared with other
        processes: their L1 must drop the id even when this one keeps no L1 (a job
        that only writes, or a replica run without L1, beside replicas that serve
        reads from theirs). It rides in the write's own script call."""
        return (self.channel, self._notice(analysis_id)) if self._redis_behind else None

    def _on_notice(self, message: str) -> None:
        sender, _, what = message.partition(" ")
        if sender == self._sender:
            return
        if what == ALL:
            self._drop_everything_local()
        elif what:
            self._drop_local(what)

    def _drop_local(self, analysis_id: str) -> None:
        """End any flight for the id (it fills nothing now) and forget its L1 entry."""
        self._flights.pop(analysis_id, None)
        if self.l1 is not None:
            self.l1.discard(analysis_id)

    def _drop_everything_local(self) -> None:
        self._flights.clear()
        if self.l1 is not None:
            self.l1.clear()

    def _l1_get(self, analysis_id: str) -> ReadyResult | Absent | None:
        return None if self.l1 is None else self.l1.get(analysis_id)

    def _l1_set(
        self,
        analysis_id: str,
        found: StoredResult | Absent,
        zstd: tuple[int, bytes] | None = None,
    ) -> ReadyResult | None:
        """Keep ``found`` in L1; the ReadyResult it became, if it is a result and was kept.

        ``zstd``, the body as the shared entry held it, becomes the ``zstd``
        representation when it was made at the level responses use.
        """
        l1 = self.l1
        if l1 is None:
            return None
        ttl = self.l1_ttl
        if isinstance(found, Absent):
            if found.version == 0:
                ttl = min(ttl, ABSENT_TTL)
            l1.put(analysis_id, found, 0, ttl)
            return None
        ready = ReadyResult(found)
        if zstd is not None and self.zstd is not None and zstd[0] == self.zstd.level:
            ready.adopt(ZSTD, zstd[1])
        if not l1.put(analysis_id, ready, ready.size, ttl):
            return None
        ready.on_grow = lambda extra: l1.charge(analysis_id, ready, extra)
        return ready

    def _store(self) -> ResultSource:
        if self.store is None:
            raise ConfigurationError(
                "store", "this ResultCache was made without a ResultStore to read through"
            )
        return self.store

    # Unsynced ids: their newest version did not reach Redis.

    def _is_unsynced(self, analysis_id: str) -> bool:
        return self._unsynced_overflow or self._notes_unknown or analysis_id in self._unsynced

    def _mark_unsynced(self, analysis_id: str, version: int, *, durable: bool = False) -> _Unsynced:
        mark = self._unsynced.get(analysis_id)
        if mark is None or mark.version < version:
            mark = self._unsynced[analysis_id] = _Unsynced(version, durable)
        if len(self._unsynced) > MAX_UNSYNCED:
            self._overflow()
        self._start_repair()
        return mark

    def _overflow(self) -> None:
        """Too many ids to follow one by one: distrust the whole shared namespace until
        it has been emptied (by the repair)."""
        self._unsynced_overflow = True
        self._drop_everything_local()

    def _start_repair(self) -> None:
        if self._repair is None or self._repair.done():
            self._repair = asyncio.ensure_future(self._repair_loop())

    async def _follow_notes(self) -> None:
        while True:
            await asyncio.sleep(UNSYNCED_POLL)
            await self._read_notes()

    async def _read_notes(self) -> None:
        """Take in the store's notes: mark what is new, forget what was repaired."""
        started = time.monotonic()
        try:
            notes = await self._store().unsynced(self.shared_namespace, MAX_UNSYNCED + 1)
        except DatabaseError as exc:
            self._notes_log.warning(
                "notes", "cannot read the notes of unsynced writes, will retry: %r", exc
            )
            return
        self._notes_unknown = False
        if len(notes) > MAX_UNSYNCED:
            self._overflow()
            self._start_repair()
            return
        noted = dict(notes)
        for analysis_id, version in notes:
            mark = self._unsynced.get(analysis_id)
            if mark is None or mark.version < version:
                self._unsynced[analysis_id] = _Unsynced(version, durable=True)
                self._drop_local(analysis_id)
        for analysis_id, mark in list(self._unsynced.items()):
            # Gone from the store: some replica put that version into Redis.
            if mark.durable and mark.since < started and analysis_id not in noted:
                del self._unsynced[analysis_id]
        if self._unsynced:
            self._start_repair()

    async def _repair_loop(self) -> None:
        """Put each unsynced id's current version into Redis once it answers again, then
        drop its note."""
        while self._unsynced or self._unsynced_overflow:
            await asyncio.sleep(REPAIR_INTERVAL)
            try:
                if self._unsynced_overflow:
                    await self._empty_namespace()
                    continue
                for analysis_id, mark in list(self._unsynced.items())[:100]:
                    found = await self._store().read(analysis_id)
                    written = await self._fill(found, notice=self._notice_for(analysis_id))
                    if written is None:
                        break
                    await self._store().forget_unsynced(
                        self.shared_namespace, analysis_id, _version(found)
                    )
                    if self._unsynced.get(analysis_id) is mark:
                        del self._unsynced[analysis_id]
            except (CacheUnavailable, DatabaseError) as exc:
                self._notes_log.warning("repair", "cache repair deferred: %r", exc)

    async def _empty_namespace(self) -> None:
        """The overflow's repair: empty the namespace, then drop every note made before."""
        started = time.monotonic()
        before = await self._store().database_now()
        await self.cache.invalidate_namespace(NAMESPACE)
        await self._store().forget_unsynced_before(self.shared_namespace, before)
        self._unsynced = {i: m for i, m in self._unsynced.items() if m.since >= started}
        self._unsynced_overflow = False
        self._drop_everything_local()
        await self.cache.publish(self.channel, self._notice(ALL))


def _id_of(found: StoredResult | Absent) -> str:
    return found.analysis_id if isinstance(found, Absent) else found.meta.analysis_id


def _version(found: StoredResult | Absent) -> int:
    return found.version if isinstance(found, Absent) else found.meta.version


def _decode(analysis_id: str, raw: bytes | None) -> entry.Entry | None:
    """What the entry holds, or None for no entry (or one this version cannot read)."""
    if raw is None:
        return None
    try:
        return entry.decode_entry(analysis_id, raw)
    except ValueError:
        return None


async def _decode_off_loop(analysis_id: str, raw: bytes | None) -> entry.Entry | None:
    """:func:`_decode`, in a worker thread when the entry is large enough that
    decompressing it would hold up the event loop."""
    if raw is not None and len(raw) >= THREAD_MINIMUM_SIZE // 8 and b" z" in raw[:100]:
        return await asyncio.to_thread(_decode, analysis_id, raw)
    return _decode(analysis_id, raw)
