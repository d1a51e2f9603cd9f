"""``redis+sentinel://`` URLs: Redis behind Sentinel, which names the master and
replaces it on failure.

    redis+sentinel://[:password@]host:26379[,host:26379...]/service-name[/db][?sentinel_password=...]

The password (if any) is the data nodes'; ``sentinel_password`` is the Sentinels' own,
when they require one. Parsing only, with no import of redis-py, so that reading the
settings stays light; :class:`service.cache.backends.RedisBackend` makes the clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from service.errors import InvalidArgument

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SCHEME


def parse(url: str) -> SentinelURL:
    """Raises :class:`InvalidArgument` naming what is wrong (never echoing a password)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != SCHEME:
        raise InvalidArgument(f"not a {SCHEME}:// URL")
    rest, _, query = rest.partition("?")
    location, _, path = rest.partition("/")
    auth, _, hosts = location.rpartition("@")
    password = unquote(auth.partition(":")[2]) or None if auth else None
    sentinels = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        if not colon:
            host, port = port, str(DEFAULT_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"{SCHEME}: each Sentinel is host:port, got {node.strip()!r}")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise InvalidArgument(f"{SCHEME}: the path is /service-name or /service-name/db")
    if len(parts) == 2 and not parts[1].isdigit():
        raise InvalidArgument(f"{SCHEME}: the database number must be a whole number")
    options = parse_qs(query)
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise InvalidArgument(f"{SCHEME}: unknown option {sorted(unknown)[0]!r}")
    sentinel_password = options.get("sentinel_password", [None])[-1]
    return SentinelURL(
        tuple(sentinels),
        unquote(parts[0]),
        int(parts[1]) if len(parts) == 2 else 0,
        password,
        sentinel_password,
    )
