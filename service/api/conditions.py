"""HTTP conditional requests (RFC 9110 section 13) for versioned results.

The ETag of a result is its version in quotes, e.g. ``"7"``: strong, because a
version names exactly one stored document.
"""

from __future__ import annotations

from service.api.responses import Problem
from service.db.results import IfMatch


def _entity_tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


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
