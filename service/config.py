"""Settings, read once from the environment (or a ``.env`` file) at start-up.

Every value has an embedded default, so ``service serve`` runs with no settings at
all: results go to an SQLite file and there is no Redis. A malformed value raises
:class:`~service.errors.ConfigurationError` naming the variable; the CLI turns that
into a one-line message and exit status 2 before anything is started.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from starlette.config import Config

from service import defaults, redis_urls
from service.core.codings import BR, CODINGS, DEFAULT_LEVELS, GZIP, ZSTD, check_level
from service.db.pgbouncer import split_pooler
from service.errors import ConfigurationError, InvalidArgument

T = TypeVar("T")

_DATABASE_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
_REDIS_SCHEMES = ("redis", "rediss", "unix", redis_urls.SCHEME, redis_urls.CLUSTER_SCHEME)
_ENCODINGS = CODINGS
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS = ("text", "json")
MiB = defaults.MiB


def default_sqlite_path() -> Path:
    """Where the embedded database lives: ``$XDG_DATA_HOME/service/results.sqlite3``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "service" / "results.sqlite3"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told, with the embedded defaults.

    Build it with :meth:`from_environ` (what the CLI does) or directly in code;
    construction validates every field the same way either way.
    """

    # Both may hold secrets: left out of repr() so a logged Settings leaks nothing.
    database_url: str = field(default="", repr=False)
    redis_url: str | None = None
    redis_max_connections: int = defaults.REDIS_MAX_CONNECTIONS
    redis_timeout: float = defaults.REDIS_TIMEOUT
    result_ttl: int = defaults.RESULT_TTL
    cache_prefix: str = defaults.CACHE_PREFIX
    l1_max_bytes: int = defaults.L1_MAX_BYTES
    l1_ttl: float = defaults.L1_TTL
    db_pool_size: int = defaults.DB_POOL_SIZE
    db_max_overflow: int = defaults.DB_MAX_OVERFLOW
    db_pool_timeout: float = defaults.DB_POOL_TIMEOUT
    db_pool_recycle: int = defaults.DB_POOL_RECYCLE
    db_pool_pre_ping: bool = defaults.DB_POOL_PRE_PING
    db_connect_timeout: float = defaults.DB_CONNECT_TIMEOUT
    db_statement_timeout: float = defaults.DB_STATEMENT_TIMEOUT
    db_lock_timeout: float = defaults.DB_LOCK_TIMEOUT
    db_maintenance_timeout: float = defaults.DB_MAINTENANCE_TIMEOUT
    db_maintenance_interval: float = 0.0
    db_maintenance_operation: str = "analyze"
    compression_min_size: int = defaults.COMPRESSION_MIN_SIZE
    compression_encodings: tuple[str, ...] = _ENCODINGS
    compression_zstd_level: int = DEFAULT_LEVELS[ZSTD]
    compression_br_level: int = DEFAULT_LEVELS[BR]
    compression_gzip_level: int = DEFAULT_LEVELS[GZIP]
    max_result_bytes: int = MiB
    http_max_age: int = 0
    http_s_maxage: int | None = None
    http_stale_while_revalidate: int = 0
    stale_if_error: int = 0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 30.0
    admin_token: str | None = field(default=None, repr=False)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "info"
    log_format: str = "text"
    migrate_on_start: bool = True
    otel_exporter_otlp_endpoint: str | None = None

    def __post_init__(self) -> None:
        url = _database_url(self.database_url or f"sqlite:///{default_sqlite_path()}")
        object.__setattr__(self, "database_url", url.render_as_string(hide_password=False))
        if self.redis_url is not None and self.redis_url.partition("://")[0] not in _REDIS_SCHEMES:
            raise ConfigurationError(
                "REDIS_URL", f"scheme must be one of {', '.join(_REDIS_SCHEMES)}"
            )
        if self.redis_url is not None:
            try:
                redis_urls.check(self.redis_url)
            except InvalidArgument as exc:
                raise ConfigurationError("REDIS_URL", str(exc)) from None
        _at_least("REDIS_MAX_CONNECTIONS", self.redis_max_connections, 1)
        _at_least("REDIS_TIMEOUT", self.redis_timeout, 0.001)
        _at_least("RESULT_TTL", self.result_ttl, 1)
        _at_least("L1_MAX_BYTES", self.l1_max_bytes, 0)
        _at_least("L1_TTL", self.l1_ttl, 0)
        _at_least("DB_POOL_SIZE", self.db_pool_size, 1)
        _at_least("DB_MAX_OVERFLOW", self.db_max_overflow, 0)
        _at_least("DB_POOL_TIMEOUT", self.db_pool_timeout, 0)
        _at_least("DB_POOL_RECYCLE", self.db_pool_recycle, -1)
        _at_least("DB_CONNECT_TIMEOUT", self.db_connect_timeout, 0.001)
        _at_least("DB_STATEMENT_TIMEOUT", self.db_statement_timeout, 0)
        _at_least("DB_LOCK_TIMEOUT", self.db_lock_timeout, 0.001)
        _at_least("DB_MAINTENANCE_TIMEOUT", self.db_maintenance_timeout, 0.001)
        _at_least("DB_MAINTENANCE_INTERVAL", self.db_maintenance_interval, 0)
        if self.db_maintenance_operation not in ("analyze", "vacuum"):
            raise ConfigurationError("DB_MAINTENANCE_OPERATION", "must be analyze or vacuum")
        _at_least("COMPRESSION_MIN_SIZE", self.compression_min_size, 0)
        for coding, level in self.compression_levels.items():
            try:
                check_level(coding, level)
            except ValueError as exc:
                raise ConfigurationError(f"COMPRESSION_{coding.upper()}_LEVEL", str(exc)) from None
        _at_least("MAX_RESULT_BYTES", self.max_result_bytes, 2)
        _at_least("HTTP_MAX_AGE", self.http_max_age, 0)
        if self.http_s_maxage is not None:
            _at_least("HTTP_S_MAXAGE", self.http_s_maxage, 0)
        _at_least("HTTP_STALE_WHILE_REVALIDATE", self.http_stale_while_revalidate, 0)
        _at_least("STALE_IF_ERROR", self.stale_if_error, 0)
        _at_least("MAX_HEADER_BYTES", self.max_header_bytes, 1024)
        _at_least("MAX_HEADERS", self.max_headers, 8)
        _at_least("HEADER_TIMEOUT", self.header_timeout, 0.001)
        _at_least("BODY_TIMEOUT", self.body_timeout, 0.001)
        _at_least("SEND_TIMEOUT", self.send_timeout, 0.001)
        if not self.cache_prefix or ":" in self.cache_prefix:
            raise ConfigurationError("CACHE_PREFIX", "must be non-empty and hold no ':'")
        unknown = [e for e in self.compression_encodings if e not in _ENCODINGS]
        if unknown or len(set(self.compression_encodings)) != len(self.compression_encodings):
            raise ConfigurationError(
                "COMPRESSION_ENCODINGS", f"a list without repeats of {', '.join(_ENCODINGS)}"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError("METRICS_PORT", "must be a TCP port, 0 to 65535")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ConfigurationError("ADMIN_TOKEN", "must be at least 16 characters")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigurationError("LOG_LEVEL", f"must be one of {', '.join(_LOG_LEVELS)}")
        if self.log_format not in _LOG_FORMATS:
            raise ConfigurationError("LOG_FORMAT", f"must be one of {', '.join(_LOG_FORMATS)}")

    @property
    def compression_levels(self) -> dict[str, int]:
        """The inline compression level of each coding."""
        return {
            ZSTD: self.compression_zstd_level,
            BR: self.compression_br_level,
            GZIP: self.compression_gzip_level,
        }

    @property
    def database(self) -> URL:
        """The database URL as SQLAlchemy parses it (with the async driver named)."""
        return make_url(self.database_url)

    @property
    def is_embedded_database(self) -> bool:
        """True when results go to SQLite rather than PostgreSQL."""
        return self.database.get_backend_name() == "sqlite"

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read every setting from ``environ`` (default: ``os.environ``) and ``env_file``.

        The environment wins over the file; a missing file is not an error.
        """
        env = os.environ if environ is None else environ
        file = env_file if env_file is not None and Path(env_file).is_file() else None
        config = Config(env_file=file, environ=dict(env))

        def read(name: str, cast: Callable[[str], T], default: T) -> T:
            raw = config(name, default=None)
            if raw is None or raw == "":
                return default
            try:
                return cast(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(name, f"cannot read {raw!r}: {exc}") from None

        def optional(name: str) -> str | None:
            value = config(name, default=None)
            return str(value) if value else None

        values: dict[str, Any] = {}
        for each in fields(cls):
            variable = each.name.upper()
            if each.name in _SECRETS_AND_URLS:
                value = optional(variable)
                values[each.name] = value if value is not None else each.default
            else:
                values[each.name] = read(variable, _READERS[each.name], each.default)
        return cls(**values)


_SECRETS_AND_URLS = ("database_url", "redis_url", "admin_token", "otel_exporter_otlp_endpoint")
"""Read as given; an empty value means unset."""


def _integer(raw: str) -> int:
    try:
        return int(raw.strip().replace("_", ""))
    except ValueError:
        raise ValueError("not a whole number") from None


def _number(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not one of true/false/1/0/yes/no/on/off")


def _word_list(raw: str) -> tuple[str, ...]:
    return tuple(word.strip().lower() for word in raw.split(",") if word.strip())


def _at_least(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigurationError(name, f"must be at least {minimum}, got {value}")


def _database_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError("DATABASE_URL", "is not a database URL") from None
    driver = _DATABASE_DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigurationError(
            "DATABASE_URL",
            f"unsupported scheme {url.drivername!r}; use postgresql+asyncpg:// or sqlite+aiosqlite://",
        )
    url = url.set(drivername=driver)
    try:
        split_pooler(url)
    except ValueError as exc:
        raise ConfigurationError("DATABASE_URL", str(exc)) from None
    return url


_READERS: dict[str, Callable[[str], object]] = {
    # How each setting but the URLs and secrets is read from its text (defaults: the fields').
    "redis_max_connections": _integer,
    "redis_timeout": _number,
    "result_ttl": _integer,
    "cache_prefix": str,
    "l1_max_bytes": _integer,
    "l1_ttl": _number,
    "db_pool_size": _integer,
    "db_max_overflow": _integer,
    "db_pool_timeout": _number,
    "db_pool_recycle": _integer,
    "db_pool_pre_ping": _boolean,
    "db_connect_timeout": _number,
    "db_statement_timeout": _number,
    "db_lock_timeout": _number,
    "db_maintenance_timeout": _number,
    "db_maintenance_interval": _number,
    "db_maintenance_operation": str.lower,
    "compression_min_size": _integer,
    "compression_encodings": _word_list,
    "compression_zstd_level": _integer,
    "compression_br_level": _integer,
    "compression_gzip_level": _integer,
    "max_result_bytes": _integer,
    "http_max_age": _integer,
    "http_s_maxage": _integer,
    "http_stale_while_revalidate": _integer,
    "stale_if_error": _integer,
    "max_header_bytes": _integer,
    "max_headers": _integer,
    "header_timeout": _number,
    "body_timeout": _number,
    "send_timeout": _number,
    "metrics_port": _integer,
    "metrics_host": str,
    "log_level": str.lower,
    "log_format": str.lower,
    "migrate_on_start": _boolean,
}
