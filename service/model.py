"""The results domain: what a result is, its metadata, absence, pages, and which ids
and documents are valid. The store, the cache and the HTTP API all speak these types;
none of them is tied to a database or to Redis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from service.errors import InvalidAnalysisId, InvalidResult, MalformedJSON

_JSON_WHITESPACE = " \t\n\r"
ANALYSIS_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_PAGE_SIZE = 1000

IfMatch = int | Literal["*"] | None
"""A version the stored result must have, ``"*"`` for "any live version", or None."""


def is_analysis_id(text: str) -> bool:
    """Whether ``text`` is an id :func:`validate_analysis_id` accepts (no exception)."""
    return (
        isinstance(text, str)
        and ANALYSIS_ID_PATTERN.fullmatch(text) is not None
        and text not in (".", "..")
    )


def validate_analysis_id(analysis_id: str) -> str:
    """Return ``analysis_id`` if it is 1-128 characters of ``A-Z a-z 0-9 . _ -``.

    Raises :class:`InvalidAnalysisId` otherwise (``..`` alone is refused too: it would
    read as a path segment in a URL).
    """
    if not is_analysis_id(analysis_id):
        shown = analysis_id[:40] if isinstance(analysis_id, str) else type(analysis_id).__name__
        raise InvalidAnalysisId(
            f"analysis_id must be 1 to 128 characters of A-Z a-z 0-9 . _ -, got {shown!r}"
        )
    return analysis_id


def encode_document(document: Mapping[str, Any] | bytes, *, parse: bool = True) -> str:
    """Validate a result document and return the JSON text to store.

    Bytes must be UTF-8 JSON whose top level is an object; they are returned as sent.
    With ``parse=False`` an object's text is not parsed here: the caller's database
    parses it anyway (PostgreSQL's JSONB input) and refuses malformed JSON itself,
    which the store reports as :class:`MalformedJSON`. Parsing a 32 KB document into
    Python objects only to throw them away was the largest CPU cost of a PUT.
    A mapping is serialized with orjson (datetimes as RFC 3339, UUIDs as strings,
    dataclasses as objects). Raises :class:`MalformedJSON` for bytes that are not
    JSON and :class:`InvalidResult` for anything else that is not an object.
    """
    if isinstance(document, bytes | bytearray | memoryview):
        try:
            text = bytes(document).decode()
        except UnicodeDecodeError as exc:
            raise MalformedJSON(f"malformed JSON: not UTF-8 ({exc.reason})") from None
        if not parse and text.lstrip(_JSON_WHITESPACE).startswith("{"):
            return text
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            parsed = _parse_beyond_double(text, exc)
        if not isinstance(parsed, dict):
            raise InvalidResult(f"a result must be a JSON object, not {_json_kind(parsed)}")
        return text
    if not isinstance(document, Mapping):
        raise InvalidResult(f"a result must be a mapping, not {type(document).__name__}")
    try:
        return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise InvalidResult(f"result cannot be serialized: {exc}") from None


def _parse_beyond_double(text: str, error: orjson.JSONDecodeError) -> Any:
    """Parse what orjson refused only because a number is beyond a double (``1e400``):
    valid JSON, which the text stores exactly as sent. Anything else is malformed."""
    if "infinity" not in str(error):
        raise MalformedJSON(f"malformed JSON: {error}") from None

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise MalformedJSON(f"malformed JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class ResultMeta:
    """What is known about a stored result besides its document."""

    analysis_id: str
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def etag(self) -> str:
        """The strong entity tag of this version, quoted as HTTP sends it."""
        return f'"{self.version}"'

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as RFC 3339 strings in UTC."""
        return {
            "analysis_id": self.analysis_id,
            "version": self.version,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result as stored: its metadata and its JSON text, ready to send."""

    meta: ResultMeta
    body: bytes

    def document(self) -> dict[str, Any]:
        """The document parsed into Python objects."""
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


@dataclass(frozen=True, slots=True)
class Absent:
    """No live result under ``analysis_id``: never written (version 0) or deleted.

    The version is what a cache needs to order this answer against writes: a deleted
    result's tombstone has the version of its delete, so a cache can tell it apart from
    (and refuse to be overwritten by) an older read that still saw the document.
    """

    analysis_id: str
    version: int


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a :meth:`ResultStore.put` did."""

    meta: ResultMeta
    created: bool
    """True when no live result existed before (HTTP 201), False when one was replaced."""
    body: bytes
    """The document as stored, exactly as a later read returns it."""

    @property
    def result(self) -> StoredResult:
        return StoredResult(self.meta, self.body)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the keyset-paginated listing."""

    items: list[ResultMeta]
    next: str | None
    """Pass as ``after`` to get the next page; None on the last page."""


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as RFC 3339, always with microseconds: ``2026-11-29T05:25:39.637563Z``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")
