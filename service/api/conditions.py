"""HTTP conditional requests (RFC 9110 section 13) for versioned results.

The ETag of a result is its version in quotes, e.g. ``"7"``: strong, because a
version names exactly one stored document.
"""

from __future__ import annotations

import functools
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime

from service.api.responses import Problem
from service.db.results import IfMatch, ResultMeta


def _entity_tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def if_none_match_hits(header: str | None, meta: ResultMeta) -> bool:
    """True when If-None-Match names the current version (weak comparison) or is ``*``."""
    if header is None:
        return False
    return any(tag == "*" or tag.removeprefix("W/") == meta.etag for tag in _entity_tags(header))


def not_modified_since(header: str | None, meta: ResultMeta) -> bool:
    """True when If-Modified-Since is at or after the last change (to the second)."""
    if header is None:
        return False
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False  # an unparsable date is ignored, as RFC 9110 says
    if since.tzinfo is None:
        return False
    return meta.updated_at.replace(microsecond=0) <= since


def parse_if_match(header: str | None) -> IfMatch:
    """The version If-Match requires, ``"*"``, or None when there is no header.

    A weak or foreign tag can never match (strong comparison), so it fails the
    precondition with 412. Several tags are refused with 400: say one version.
    """
    if header is None:
        return None
    tags = _entity_tags(header)
    if tags == ["*"]:
        return "*"
    if len(tags) != 1:
        raise Problem(
            400, "If-Match must hold exactly one entity tag or *", slug="bad-precondition"
        )
    tag = tags[0]
    digits = tag[1:-1] if len(tag) > 2 and tag[0] == tag[-1] == '"' else ""
    if not digits.isascii() or not digits.isdigit():
        raise Problem(
            412,
            f"If-Match {tag} does not name a version of this result",
            slug="precondition-failed",
        )
    return int(digits)


def parse_if_none_match_for_write(header: str | None) -> bool:
    """True for ``If-None-Match: *`` (create only); other values are refused with 400."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    raise Problem(400, "on PUT, If-None-Match supports only *", slug="bad-precondition")


@functools.lru_cache(maxsize=4096)
def http_date(moment: datetime) -> str:
    """An IMF-fixdate for Last-Modified (memoized: a hot result sends the same one)."""
    return format_datetime(moment, usegmt=True)
