"""HTTP conditional requests (RFC 9110 section 13) for versioned results.

The ETag of a result is its version in quotes, e.g. ``"7"``: strong, because a
version names exactly one stored document.
"""

from __future__ import annotations

from service.api.responses import Problem, quoted
from service.core.validators import version_of_tag
from service.model import IfMatch


def _entity_tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def parse_if_match(header: str | None) -> IfMatch:
    """The version If-Match requires, ``"*"``, or None when there is no header.

    Strong comparison (RFC 9110 section 13.1.1): only the exact tag the service sends
    for a version can match it. A weak tag, a foreign one, a non-canonical number
    (``"006"``, ``"+6"``) or one past the largest version (a BIGINT) names no version,
    so the precondition fails with 412 before anything is read. Several tags are
    refused with 400: say one version. The tag is quoted capped in the detail.
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
    version = version_of_tag(tags[0])
    if version is None:
        raise Problem(
            412,
            f"If-Match {quoted(tags[0])} does not name a version of this result",
            slug="precondition-failed",
        )
    return version


def parse_if_none_match_for_write(header: str | None) -> bool:
    """True for ``If-None-Match: *`` (create only); other values are refused with 400."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    raise Problem(400, "on PUT, If-None-Match supports only *", slug="bad-precondition")
