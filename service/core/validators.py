"""HTTP validators (RFC 9110 section 8.8 and 13.1): entity tags and dates.

One place for the comparisons that the compression layer, the results route and the
hit path all make, so that they can never answer the same request differently.
"""

from __future__ import annotations

import functools
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime


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
