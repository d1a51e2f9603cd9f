"""The two REDIS_URL forms beyond ``redis://``: Sentinel and Cluster.

    redis+sentinel://[:password@]host:26379[,host:26379...]/service-name[/db][?sentinel_password=...]
    redis+cluster://[:password@]host:port[,host:port...]

Behind Sentinel the password (if any) is the data nodes'; ``sentinel_password`` is the
Sentinels' own, when they require one. A cluster URL names some of its nodes (any one
will do; the others are found from it) and has no database number: a cluster has only
database 0. Parsing only, with no import of redis-py, so that reading the settings
stays light; :class:`service.cache.backends.RedisBackend` makes the clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from service.errors import InvalidArgument

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SCHEME


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() == CLUSTER_SCHEME


def check(url: str) -> None:
    """Parse a Sentinel or Cluster URL for its errors (other forms are redis-py's)."""
    if is_sentinel_url(url):
        parse(url)
    elif is_cluster_url(url):
        parse_cluster(url)


def parse_cluster(url: str) -> ClusterURL:
    """Raises :class:`InvalidArgument` naming what is wrong (never echoing a password)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != CLUSTER_SCHEME:
        raise InvalidArgument(f"not a {CLUSTER_SCHEME}:// URL")
    if "?" in rest or rest.partition("/")[2].strip("/") not in ("", "0"):
        raise InvalidArgument(f"{CLUSTER_SCHEME}: no path or options (a cluster has database 0)")
    password, nodes = _location(CLUSTER_SCHEME, rest.partition("/")[0], CLUSTER_DEFAULT_PORT)
    return ClusterURL(nodes, password)


def _location(
    scheme: str, location: str, default_port: int
) -> tuple[str | None, tuple[tuple[str, int], ...]]:
    """The password and the ``host:port`` list of ``[:password@]host:port,...``."""
    auth, _, hosts = location.rpartition("@")
    password = unquote(auth.partition(":")[2]) or None if auth else None
    nodes = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        if not colon or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = node.strip(), str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"{scheme}: each node is host:port, got {node.strip()!r}")
        nodes.append((host.strip("[]"), int(port)))
    return password, tuple(nodes)


def parse(url: str) -> SentinelURL:
    """Raises :class:`InvalidArgument` naming what is wrong (never echoing a password)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != SCHEME:
        raise InvalidArgument(f"not a {SCHEME}:// URL")
    rest, _, query = rest.partition("?")
    location, _, path = rest.partition("/")
    password, sentinels = _location(SCHEME, location, DEFAULT_PORT)
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
        sentinels,
        unquote(parts[0]),
        int(parts[1]) if len(parts) == 2 else 0,
        password,
        sentinel_password,
    )
