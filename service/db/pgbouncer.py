"""The ``pgbouncer`` parameter of a database URL.

Kept in a module of its own, importing nothing but SQLAlchemy's URL, so that reading
the settings does not load the engine.
"""

from __future__ import annotations

from sqlalchemy.engine import URL

POOLER_PARAMETER = "pgbouncer"
"""The query parameter of a database URL that says it leads to PgBouncer in
transaction mode (``?pgbouncer=true``, as other tools spell it)."""

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def split_pooler(url: URL) -> tuple[URL, bool]:
    """``url`` without its ``pgbouncer`` parameter, and whether that parameter was true.

    Raises ValueError for a value that is not a boolean, or for the parameter on a
    database other than PostgreSQL.
    """
    raw = url.query.get(POOLER_PARAMETER)
    if raw is None:
        return url, False
    value = (raw if isinstance(raw, str) else raw[-1]).strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{POOLER_PARAMETER}={value!r} is not true or false")
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"{POOLER_PARAMETER} applies to PostgreSQL URLs only")
    return url.difference_update_query([POOLER_PARAMETER]), value in _TRUE
