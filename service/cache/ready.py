"""ReadyResult: a cached result version held as the responses a read sends, built once.

A hit must format and parse nothing: the body in each coding a client has asked for,
and the header block of each representation (Content-Type, Content-Length, ETag with
its coding, Last-Modified, Vary), are made the first time they are needed and
kept with the version in the in-process tier. The results route and the hit path in
front of the framework both answer from these objects, so they send the same bytes.

One representation per tag: the bytes under ``"7-br"`` are ``compress("br", level,
body)`` at the configured level, made once per version and coding and never replaced,
so every response under that tag (and every replica's, with the same settings and
libraries) carries the same bytes, as RFC 9110 section 8.8.1 asks of a strong validator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final

from service.core.codings import compress, encoded_etag
from service.core.negotiation import IDENTITY
from service.core.validators import http_date, since_seconds, weak_match
from service.model import StoredResult

THREAD_MINIMUM_SIZE: Final = 64 * 1024
"""Bodies this large are compressed in a worker thread, not on the event loop."""
_MAX_DATE_LENGTH: Final = 64
"""Longer than any HTTP date format: such an If-Modified-Since is ignored unparsed."""

Headers = list[tuple[bytes, bytes]]


def header_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``headers`` as HTTP/1.1 header lines, each ending in CRLF."""
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


class Representation:
    """One (version, coding): its bytes, its tag, and the header blocks of 200 and 304.

    The blocks hold what the representation alone decides; the caller appends what the
    answering tier and the policy add (Cache-Control, Cache-Status). Each block comes
    with ``Last-Modified`` and without: a version is sent without it during the second
    it was written (see :meth:`ReadyResult.settled`).
    """

    __slots__ = ("_blocks", "_lines", "body", "coding", "etag")

    def __init__(self, body: bytes, coding: str, etag: str, last_modified: bytes) -> None:
        self.body = body
        self.coding = coding
        self.etag = etag
        tag = (b"etag", etag.encode())
        modified = (b"last-modified", last_modified)
        vary = (b"vary", b"Accept-Encoding")
        described: Headers = [(b"content-type", b"application/json")]
        described.append((b"content-length", b"%d" % len(body)))
        encoding: Headers = []
        if coding != IDENTITY:
            encoding.append((b"content-encoding", coding.encode()))
        self._blocks: tuple[Headers, Headers, Headers, Headers] = (
            [*described, tag, modified, vary, *encoding],
            [tag, modified, vary],
            [*described, tag, vary, *encoding],
            [tag, vary],
        )
        self._lines: list[tuple[Headers, bytes] | None] = [None, None, None, None]

    def block(self, not_modified: bool, settled: bool) -> Headers:
        """The header block of a 304 or a 200, with Last-Modified when ``settled``.

        Shared by every response: copy it before adding to it.
        """
        return self._blocks[not_modified + (0 if settled else 2)]

    def lines(self, not_modified: bool, settled: bool, tail: Headers) -> bytes:
        """:meth:`block` and ``tail`` as HTTP/1.1 header lines, with the empty line that
        ends a head: for a server that writes the response itself. Made once per block
        (for the latest ``tail`` asked for: a server asks with one tail only)."""
        index = not_modified + (0 if settled else 2)
        made = self._lines[index]
        if made is None or made[0] is not tail:
            lines = header_lines((*self._blocks[index], *tail)) + b"\r\n"
            made = self._lines[index] = (tail, lines)
        return made[1]


class ReadyResult:
    """A stored result version and its representations (see the module docstring)."""

    __slots__ = ("_last_modified", "_made", "_modified", "_pending", "on_grow", "stored")

    def __init__(self, stored: StoredResult) -> None:
        self.stored = stored
        meta = stored.meta
        self._last_modified = http_date(meta.updated_at).encode()
        self._modified = int(meta.updated_at.timestamp())
        self._made: dict[str, Representation] = {}
        self._pending: dict[str, asyncio.Future[Representation]] = {}
        self.on_grow: Callable[[int], None] | None = None
        """Told how many bytes each new encoding adds (the tier that holds this charges it)."""

    @property
    def size(self) -> int:
        """Bytes held: the body, and each encoded body."""
        body = self.stored.body
        return len(body) + sum(len(rep.body) for rep in self._made.values() if rep.body is not body)

    def get(self, coding: str) -> Representation | None:
        """The representation a request negotiated to ``coding`` gets, once made."""
        return self._made.get(coding)

    async def make(self, coding: str, level: int, minimum_size: int) -> Representation:
        """The representation for ``coding``, made now if it was not yet.

        A body under ``minimum_size``, or one that does not shrink, is sent as identity
        (under its own tag) to a request for ``coding`` too. Large bodies are compressed
        in a worker thread; concurrent callers share that one encoding.
        """
        made = self._made.get(coding)
        if made is not None:
            return made
        body = self.stored.body
        if coding == IDENTITY or len(body) < minimum_size:
            return self._keep(coding, self._identity())
        if len(body) < THREAD_MINIMUM_SIZE:
            return self._keep(coding, self._encoded(coding, compress(coding, level, body)))
        pending = self._pending.get(coding)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._encode, coding, level))
            self._pending[coding] = pending
        made = await asyncio.shield(pending)
        self._pending.pop(coding, None)
        return self._keep(coding, made)

    def settled(self, now: float) -> bool:
        """Whether the second this version was written in has ended at ``now`` (Unix
        time): only then is it sent with Last-Modified.

        HTTP dates count whole seconds. Sent during that second, Last-Modified could be
        later than the Date a server took a moment earlier (RFC 9110 section 8.8.2.1
        forbids it), and a second write within the same second would carry the same
        date, so a client revalidating the first with If-Modified-Since would be told
        304 for changed content. Once the second has ended, the version that holds a
        date is the last one written in it; the ETag still validates it before then.
        """
        return now >= self._modified + 1

    def adopt(self, coding: str, data: bytes) -> None:
        """Keep ``data``, ``coding`` bytes that :meth:`make` would have made (the same
        level, made elsewhere: the shared tier keeps them), unless that coding is made."""
        if coding not in self._made:
            self._keep(coding, self._encoded(coding, data))

    def not_modified(
        self,
        representation: Representation,
        if_none_match: str | None,
        if_modified_since: str | None,
        settled: bool,
    ) -> bool:
        """RFC 9110 section 13.2.2 for a GET or HEAD of ``representation``.

        If-None-Match, when sent, decides alone (weak comparison with this
        representation's own tag); otherwise If-Modified-Since, to the second, and only
        once the version is ``settled``: before, no Last-Modified was sent for it, and a
        date in its second may stand for an earlier version of the same second.
        """
        if if_none_match is not None:
            return weak_match(if_none_match, representation.etag)
        if not settled or if_modified_since is None or len(if_modified_since) > _MAX_DATE_LENGTH:
            return False
        since = since_seconds(if_modified_since)
        return since is not None and self._modified <= since

    def _encode(self, coding: str, level: int) -> Representation:
        return self._encoded(coding, compress(coding, level, self.stored.body))

    def _encoded(self, coding: str, data: bytes) -> Representation:
        if len(data) >= len(self.stored.body):
            return self._identity()
        etag = encoded_etag(self.stored.meta.etag, coding)
        return Representation(data, coding, etag, self._last_modified)

    def _identity(self) -> Representation:
        made = self._made.get(IDENTITY)
        if made is None:
            made = Representation(
                self.stored.body, IDENTITY, self.stored.meta.etag, self._last_modified
            )
            self._made[IDENTITY] = made
        return made

    def _keep(self, coding: str, representation: Representation) -> Representation:
        """Store the first representation made for ``coding``: it is never replaced."""
        kept = self._made.setdefault(coding, representation)
        if kept is representation and kept.body is not self.stored.body and self.on_grow:
            self.on_grow(len(kept.body))
        return kept
