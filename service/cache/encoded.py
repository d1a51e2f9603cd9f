"""EncodedResults: a result version's bytes in each coding clients ask for, made once.

Compressing a 20 KB document inline costs 45 to 165 µs per response, more than the
whole rest of a cached read. So the first request for a (version, coding) pair is
answered by the compression layer as usual, and schedules this one encoding in a
worker thread, at a higher level than inline compression can afford; every later
request for it sends the stored bytes with no compression work at all.

The level is the highest whose expected time for the body's size stays within
``budget`` (50 ms by default), from rates measured on one core of a small server
(see ``LADDERS``); at most one encoding runs at a time, so pre-encoding never takes
more than one core from request handling. Entries are keyed by version and update
time, so a new version can never be answered with an old version's bytes, and they
live in a byte-bounded LRU of their own (``ENCODED_MAX_BYTES``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Final

from service.cache.backends import MemoryBackend
from service.core.codings import BR, GZIP, ZSTD, compress
from service.db.results import StoredResult

logger = logging.getLogger(__name__)

LADDERS: Final[Mapping[str, tuple[tuple[int, float], ...]]] = {
    # (level, bytes per second it is expected to sustain): 70% of what a 20 KB JSON
    # document measured on one core, so a slower machine still stays near the budget.
    BR: ((11, 0.6e6), (9, 4.5e6), (6, 45e6), (4, 0.0)),
    ZSTD: ((19, 1.3e6), (15, 4e6), (9, 45e6), (3, 0.0)),
    GZIP: ((9, 40e6), (6, 0.0)),
}
"""For each coding, levels from best to fastest; the last one is used whatever the size."""
MAX_PENDING: Final = 256
"""Encodings waiting for the worker; past this, requests are compressed inline only."""


def level_for(coding: str, size: int, budget: float) -> int:
    """The best level of ``coding`` expected to encode ``size`` bytes within ``budget`` s."""
    ladder = LADDERS[coding]
    for level, rate in ladder:
        if rate and size / rate <= budget:
            return level
    return ladder[-1][0]


class EncodedResults:
    """Encoded representations of stored results, keyed by version (see module docstring)."""

    def __init__(self, max_bytes: int, *, minimum_size: int = 500, budget: float = 0.05) -> None:
        self._bytes = MemoryBackend(max_bytes)
        self.minimum_size = minimum_size
        self.budget = budget
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._worker = asyncio.Semaphore(1)
        self.made = 0

    def __len__(self) -> int:
        return len(self._bytes)

    @property
    def size_bytes(self) -> int:
        return self._bytes.size_bytes

    def get(self, stored: StoredResult, coding: str) -> bytes | None:
        """``stored``'s body in ``coding`` if already made; else None, and it is scheduled.

        Also None (and nothing scheduled) for a coding we do not produce, a body under
        the minimum size, or one that did not get smaller.
        """
        if coding not in LADDERS or len(stored.body) < self.minimum_size:
            return None
        meta = stored.meta
        key = f"{meta.analysis_id}\n{meta.version}\n{meta.updated_at.timestamp()}\n{coding}"
        encoded = self._bytes.peek(key)
        if encoded is None and key not in self._pending and len(self._pending) < MAX_PENDING:
            task = asyncio.get_running_loop().create_task(self._make(key, coding, stored.body))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        return encoded or None

    async def aclose(self) -> None:
        """Cancel encodings not yet made and forget the ones that were."""
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._bytes.clear()

    async def _make(self, key: str, coding: str, body: bytes) -> None:
        async with self._worker:
            level = level_for(coding, len(body), self.budget)
            encoded = await asyncio.to_thread(compress, coding, level, body)
        self.made += 1
        # Stored even when it did not shrink, as b"": "do not ask again" for this version.
        self._bytes.put(key, encoded if len(encoded) < len(body) else b"", None)
        logger.debug(
            "encoded key=%r coding=%s level=%d %d->%d bytes",
            key.partition("\n")[0],
            coding,
            level,
            len(body),
            len(encoded),
        )
