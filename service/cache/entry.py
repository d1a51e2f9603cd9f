"""How a result is laid out in the cache: one byte string, version first.

    b"<version> R <created_us> <updated_us> <fresh_until_ms>\\n" + the JSON text as stored
    b"<version> R <created_us> <updated_us> <fresh_until_ms> z<level>\\n" + the same, zstd
    b"<version> T\\n"                            (absent: deleted, or never written)

The version leads so that a guarded write can compare versions from the first bytes
alone (Redis reads them with GETRANGE, never the whole value). The body is the JSON
text exactly as the database returned it, so a hit sends it without parsing anything;
or that text compressed with zstd at ``level`` (JSON shrinks about tenfold): Redis then
holds a tenth of the bytes, and a replica that reads the entry has the bytes a
``zstd`` response sends without compressing anything (:class:`Entry` keeps them).

``fresh_until_ms`` (Unix time) ends the entry's freshness; the key itself lives up to
STALE_IF_ERROR seconds longer, so that a read can serve it when the database fails.
Entries written before it existed (four fields) are fresh for as long as they live.

Version 0 with a document is an entry cached by hand (``cache_analysis_result``
without a version): it is served to SDK callers but never passed off as a stored
version by the read-through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import zstandard

from service.model import Absent, ResultMeta, StoredResult

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_DECOMPRESSED: Final = 1 << 30
"""A compressed body claiming more than this is not decompressed (the entry is ignored)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """What an entry holds: the result or its absence, the end of its freshness (Unix
    time; None: while it is kept), and the body in zstd when it was stored so."""

    found: StoredResult | Absent
    fresh_until: float | None = None
    zstd: tuple[int, bytes] | None = None
    """``(level, bytes)``: the body as one zstd frame at that level."""


def encode(
    found: StoredResult | Absent,
    fresh_until: float | None = None,
    zstd: tuple[int, bytes] | None = None,
) -> bytes:
    """The cache entry for what the database answered, fresh until ``fresh_until``,
    with ``zstd = (level, frame)`` stored in place of the body."""
    if isinstance(found, Absent):
        return b"%d T\n" % found.version
    meta = found.meta
    header = b"%d R %d %d" % (meta.version, _micros(meta.created_at), _micros(meta.updated_at))
    if fresh_until is not None:
        header += b" %d" % int(fresh_until * 1000)
        if zstd is not None:
            return header + b" z%d\n" % zstd[0] + zstd[1]
    return header + b"\n" + found.body


def decode(analysis_id: str, entry: bytes) -> StoredResult | Absent:
    """The result (or absence) an entry holds; ValueError when it is not an entry."""
    return decode_entry(analysis_id, entry).found


def decode_entry(analysis_id: str, entry: bytes) -> Entry:
    """Everything an entry holds (see :class:`Entry`); ValueError when it is not one."""
    end = entry.find(b"\n")
    if end < 0:
        raise ValueError("not a result cache entry")
    fields = entry[:end].split(b" ")
    if len(fields) == 2 and fields[1] == b"T":
        return Entry(Absent(analysis_id, int(fields[0])))
    if len(fields) not in (4, 5, 6) or fields[1] != b"R":
        raise ValueError("not a result cache entry")
    version, created, updated = int(fields[0]), int(fields[2]), int(fields[3])
    meta = ResultMeta(analysis_id, version, _moment(created), _moment(updated))
    fresh_until = int(fields[4]) / 1000 if len(fields) >= 5 else None
    data = entry[end + 1 :]
    if len(fields) == 6:
        if not fields[5].startswith(b"z"):
            raise ValueError("not a result cache entry")
        level = int(fields[5][1:])
        return Entry(StoredResult(meta, _unzstd(data)), fresh_until, (level, data))
    return Entry(StoredResult(meta, data), fresh_until)


def _unzstd(frame: bytes) -> bytes:
    try:
        size = zstandard.frame_content_size(frame)
        if size < 0 or size > MAX_DECOMPRESSED:
            raise ValueError("a compressed body of unknown or excessive size")
        return zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"a corrupt compressed body: {exc}") from None


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
