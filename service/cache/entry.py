"""How a result is laid out in the cache: one byte string, version first.

    b"<version> R <created_us> <updated_us>\\n" + the JSON text as stored
    b"<version> T\\n"                            (absent: deleted, or never written)

The version leads so that a guarded write can compare versions from the first bytes
alone (Redis reads them with GETRANGE, never the whole value). The body is the JSON
text exactly as the database returned it, so a hit sends it without parsing anything.
Version 0 with a document is an entry cached by hand (``cache_analysis_result``
without a version): it is served to SDK callers but never passed off as a stored
version by the read-through.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.model import Absent, ResultMeta, StoredResult

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode(found: StoredResult | Absent, fresh_until: float | None = None) -> bytes:
    """The cache entry for what the database answered, fresh until ``fresh_until``
    (Unix time; None: for as long as it is kept)."""
    if isinstance(found, Absent):
        return b"%d T\n" % found.version
    meta = found.meta
    header = b"%d R %d %d" % (meta.version, _micros(meta.created_at), _micros(meta.updated_at))
    if fresh_until is not None:
        header += b" %d" % int(fresh_until * 1000)
    return header + b"\n" + found.body


def decode(analysis_id: str, entry: bytes) -> StoredResult | Absent:
    """The result (or absence) an entry holds; ValueError when it is not an entry."""
    return decode_fresh(analysis_id, entry)[0]


def decode_fresh(analysis_id: str, entry: bytes) -> tuple[StoredResult | Absent, float | None]:
    """:func:`decode`, and the Unix time its freshness ends (None: while it is kept)."""
    end = entry.find(b"\n")
    if end < 0:
        raise ValueError("not a result cache entry")
    fields = entry[:end].split(b" ")
    if len(fields) == 2 and fields[1] == b"T":
        return Absent(analysis_id, int(fields[0])), None
    if len(fields) not in (4, 5) or fields[1] != b"R":
        raise ValueError("not a result cache entry")
    version, created, updated = int(fields[0]), int(fields[2]), int(fields[3])
    meta = ResultMeta(analysis_id, version, _moment(created), _moment(updated))
    fresh_until = int(fields[4]) / 1000 if len(fields) == 5 else None
    return StoredResult(meta, entry[end + 1 :]), fresh_until


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
