"""HTTP validators (RFC 9110 section 8.8 and 13.1): entity tags and dates.

One place for the comparisons that the compression layer, the results route and the
hit path all make, so that they can never answer the same request differently.
"""

from __future__ import annotations

import functools
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Final

MAX_VERSION: Final = 2**63 - 1
"""The largest version there can be: versions are PostgreSQL BIGINTs."""


def weak_match(header: str, etag: str) -> bool:
    """True when an If-None-Match value names ``etag`` (weak comparison) or is ``*``.

    ``header`` is the field value as sent: a comma-separated list of entity tags.
    """
    target = etag.removeprefix("W/")
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == target:
            return True
    return False


def bounded_decimal(text: str, maximum: int) -> int | None:
    """``text`` as a whole number from 0 to ``maximum``, or None when it is not one.

    ASCII digits only (``str.isdigit`` also takes ``"²"``, which ``int`` refuses), and
    the length is checked before ``int`` runs: a client's 5,000-digit number is refused
    in constant time instead of reaching Python's 4,300-digit conversion limit (a
    ValueError, that is a 500). Leading zeros are allowed: ``limit=010`` is 10.
    """
    if not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip("0")
    if len(significant) > len(str(maximum)):
        return None
    value = int(significant or "0")
    return value if value <= maximum else None


def version_of_tag(tag: str) -> int | None:
    """The version a strong entity tag names, or None when it names none.

    The tags this service sends are the canonical decimal version in quotes (``"7"``),
    and RFC 9110 section 8.8.3.2's strong comparison needs identical opaque tags: so
    ``"007"``, ``"+7"``, ``" 7"``, ``W/"7"`` and anything past the largest BIGINT
    (:data:`MAX_VERSION`) name no version at all and can never match.
    """
    if len(tag) < 3 or tag[0] != '"' or tag[-1] != '"':
        return None
    digits = tag[1:-1]
    if digits != "0" and digits.startswith("0"):
        return None
    return bounded_decimal(digits, MAX_VERSION)


@functools.lru_cache(maxsize=256)
def since_seconds(header: str) -> int | None:
    """An If-Modified-Since value as whole seconds since the epoch, or None when it is
    not a valid HTTP date (RFC 9110 says to ignore it then).

    Memoized: clients revalidating one hot result send the same value over and over.
    """
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError, OverflowError):
        return None
    if since.tzinfo is None:
        return None
    try:
        return int(since.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def http_date(moment: datetime) -> str:
    """An IMF-fixdate for Last-Modified (memoized: a hot result sends the same one)."""
    return format_datetime(moment, usegmt=True)
