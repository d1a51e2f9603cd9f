"""Accept-Encoding negotiation (RFC 9110 section 12.5.3): the one function everything uses.

The client's preference comes first (the highest q wins), then the server's order
(``available``), and ``identity`` last among equals: compressing is why we negotiate.

* A missing header selects identity. The RFC allows any coding then, but clients
  that send nothing (scripts, probes) rarely want one, as nginx and Caddy also assume.
* An empty header means "no coding": identity.
* ``q=0`` excludes; ``*`` stands for every coding the header does not name, identity
  included; identity is acceptable unless excluded by ``identity;q=0`` or ``*;q=0``,
  and when the header does not name it, it is the last resort (``gzip;q=0.1`` still
  selects gzip), as Go and Caddy read it.
* Names are case-insensitive and ``x-gzip`` means ``gzip`` (section 8.4.1.3).
* An element whose q is not a valid qvalue (``q=abc``, ``q=2``, ``q=0.1234``) breaks
  the grammar, and is ignored as a whole.

``None`` means nothing is acceptable, identity included: the caller decides what to
send (the RFC suggests 406, or identity anyway).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

IDENTITY = "identity"
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_ALIASES = {"x-gzip": "gzip"}
_FALLBACK = 0.0001
"""Identity's weight when the header does not name it: acceptable, below any named q."""


def choose_coding(accept: str | None, available: Sequence[str], *, transform: bool = True) -> str:
    """The content coding a response to this request is sent in, before its size is known.

    The one rule that the compression layer, the results route and the hit path share:
    identity when the request forbids transforming the representation (``Range``, or
    ``Cache-Control: no-transform``), else what :func:`negotiate` picks, and identity
    when the client accepts nothing (sending bytes it may decode beats a 406).
    ``accept`` is the Accept-Encoding value, several fields joined with ``", "``.
    """
    if not transform:
        return IDENTITY
    return negotiate(accept, available) or IDENTITY


def negotiate(header: str | None, available: Sequence[str]) -> str | None:
    """The coding to use for ``available`` (server order) under ``header``.

    Returns one of ``available``, ``"identity"``, or None when the client refuses
    everything, identity included.
    """
    if header is None:
        return IDENTITY
    return _negotiate(header, tuple(available))


@functools.lru_cache(maxsize=512)
def _negotiate(header: str, available: tuple[str, ...]) -> str | None:
    weights = parse_accept_encoding(header)
    wildcard = weights.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in (*available, IDENTITY):
        q = weights.get(coding)
        if q is None:
            q = wildcard if wildcard is not None else (_FALLBACK if coding == IDENTITY else 0.0)
        if q > best_q:  # strictly: among equals, the earlier (server order) stays
            best, best_q = coding, q
    return best


def parse_accept_encoding(header: str) -> dict[str, float]:
    """Each named coding (lower case, aliases resolved) and ``*`` with its q-value.

    A coding named twice keeps its highest q; malformed elements are left out.
    """
    weights: dict[str, float] = {}
    for element in header.split(","):
        name, *params = (part.strip() for part in element.split(";"))
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() != "q":
                continue
            value = value.strip()
            if not _QVALUE.fullmatch(value):
                break
            q = float(value)
        else:
            coding = _ALIASES.get(name.lower(), name.lower())
            weights[coding] = max(q, weights.get(coding, 0.0))
    return weights
