"""Settings: embedded defaults, parsing, and a precise error for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import redis_urls
from service.config import Settings, default_sqlite_path
from service.db.pool import ConnectionPool
from service.errors import ConfigurationError, InvalidArgument


def read(**environ: str) -> Settings:
    return Settings.from_environ(environ, env_file=None)


def test_no_settings_at_all_means_embedded_sqlite_and_no_redis(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = read()
    assert settings.is_embedded_database
    assert settings.database.drivername == "sqlite+aiosqlite"
    assert settings.database.database == str(tmp_path / "service" / "results.sqlite3")
    assert settings.redis_url is None
    assert (settings.db_pool_size, settings.db_max_overflow) == (20, 10)
    assert (settings.db_pool_timeout, settings.db_pool_recycle) == (30.0, 1800)
    assert settings.max_result_bytes == 1024 * 1024
    assert settings.compression_encodings == ("zstd", "br", "gzip")
    assert settings.compression_levels == {"zstd": 3, "br": 4, "gzip": 6}
    assert (settings.metrics_port, settings.metrics_host) == (None, "127.0.0.1")


def test_default_sqlite_path_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert default_sqlite_path() == Path("/srv/data/service/results.sqlite3")


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u:p@db:5432/r", "postgresql+asyncpg"),
        ("postgres://u@db/r", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@db/r", "postgresql+asyncpg"),
        ("sqlite:///x.db", "sqlite+aiosqlite"),
    ],
)
def test_database_url_schemes_are_normalised_to_async_drivers(given: str, driver: str) -> None:
    settings = read(DATABASE_URL=given)
    assert settings.database.drivername == driver


def test_a_sentinel_url_names_every_sentinel_the_service_and_the_database() -> None:
    url = "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/my%20master/3?sentinel_password=spw"
    assert read(REDIS_URL=url).redis_url == url
    assert redis_urls.parse(url) == redis_urls.SentinelURL(
        (("s1", 26379), ("s2", 26379), ("::1", 26380)), "my master", 3, "pw", "spw"
    )


def test_a_cluster_url_names_some_nodes_and_no_database() -> None:
    url = "redis+cluster://:pw@n1:7000,n2,[::1]:7002"
    assert read(REDIS_URL=url).redis_url == url
    assert redis_urls.parse_cluster(url) == redis_urls.ClusterURL(
        (("n1", 7000), ("n2", 6379), ("::1", 7002)), "pw"
    )


def test_pgbouncer_true_in_the_database_url_is_kept_for_the_pool() -> None:
    settings = read(DATABASE_URL="postgresql://u@bouncer:6432/r?pgbouncer=true")
    assert settings.database.query["pgbouncer"] == "true"


async def test_the_pool_takes_pgbouncer_out_of_the_url_and_refuses_other_values() -> None:
    pool = ConnectionPool("postgresql+asyncpg://u@127.0.0.1:1/r?pgbouncer=true&ssl=disable")
    try:
        assert pool.behind_pgbouncer
        assert "pgbouncer" not in pool.safe_url
        assert "ssl=disable" in pool.safe_url
    finally:
        await pool.aclose()
    assert not ConnectionPool("postgresql+asyncpg://u@127.0.0.1:1/r").behind_pgbouncer
    with pytest.raises(InvalidArgument, match="pgbouncer='sometimes' is not true or false"):
        ConnectionPool("postgresql+asyncpg://u@127.0.0.1:1/r?pgbouncer=sometimes")


def test_values_are_read_and_cast() -> None:
    settings = read(
        DB_POOL_SIZE="5",
        DB_MAX_OVERFLOW="0",
        DB_POOL_TIMEOUT="0.5",
        RESULT_TTL="60",
        COMPRESSION_ENCODINGS="gzip, BR",
        COMPRESSION_ZSTD_LEVEL="19",
        COMPRESSION_BR_LEVEL="0",
        COMPRESSION_GZIP_LEVEL="9",
        DB_POOL_PRE_PING="off",
        LOG_LEVEL="DEBUG",
        REDIS_URL="rediss://cache:6380/0",
        ADMIN_TOKEN="x" * 32,
    )
    assert settings.db_pool_size == 5
    assert settings.db_max_overflow == 0
    assert settings.db_pool_timeout == 0.5
    assert settings.result_ttl == 60
    assert settings.compression_encodings == ("gzip", "br")
    assert settings.compression_levels == {"zstd": 19, "br": 0, "gzip": 9}
    assert settings.db_pool_pre_ping is False
    assert settings.log_level == "debug"
    assert settings.redis_url == "rediss://cache:6380/0"


def test_maintenance_settings_are_read_and_checked() -> None:
    settings = read(
        DB_LOCK_TIMEOUT="0.25",
        DB_MAINTENANCE_TIMEOUT="600",
        DB_MAINTENANCE_INTERVAL="86400",
        DB_MAINTENANCE_OPERATION="Vacuum",
    )
    assert settings.db_lock_timeout == 0.25
    assert settings.db_maintenance_timeout == 600.0
    assert settings.db_maintenance_interval == 86400.0
    assert settings.db_maintenance_operation == "vacuum"
    defaults = read()
    assert (defaults.db_lock_timeout, defaults.db_maintenance_timeout) == (5.0, 3600.0)
    assert (defaults.db_maintenance_interval, defaults.db_maintenance_operation) == (0.0, "analyze")
    for variable, value in [
        ("DB_MAINTENANCE_OPERATION", "full"),
        ("DB_LOCK_TIMEOUT", "0"),
        ("DB_MAINTENANCE_INTERVAL", "-1"),
        ("DB_MAINTENANCE_TIMEOUT", "soon"),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            read(**{variable: value})
        assert caught.value.variable == variable
        assert str(caught.value).startswith(f"{variable}: ")


def test_http_caching_settings_refuse_what_cannot_be_a_lifetime() -> None:
    for variable, value in [
        ("HTTP_MAX_AGE", "-1"),
        ("HTTP_S_MAXAGE", "-5"),
        ("HTTP_STALE_WHILE_REVALIDATE", "soon"),
        ("STALE_IF_ERROR", "1.5"),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_environ({variable: value}, env_file=None)
        assert caught.value.variable == variable
    # An empty endpoint means tracing off, like every other empty URL.
    assert Settings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, env_file=None) == Settings()


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DB_POOL_SIZE=7\nRESULT_TTL=99\n")
    settings = Settings.from_environ({"RESULT_TTL": "5"}, env_file=env_file)
    assert settings.db_pool_size == 7
    assert settings.result_ttl == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_POOL_SIZE", "abc"),
        ("DB_POOL_SIZE", "0"),
        ("DB_POOL_SIZE", "2.5"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("DB_POOL_TIMEOUT", "soon"),
        ("DB_POOL_TIMEOUT", "nan"),
        ("DB_POOL_PRE_PING", "maybe"),
        ("DATABASE_URL", "mysql://root@db/x"),
        ("DATABASE_URL", "http://example/x"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "postgresql://u@db:6432/r?pgbouncer=maybe"),
        ("DATABASE_URL", "sqlite:///x.db?pgbouncer=true"),
        ("REDIS_URL", "memcached://cache"),
        ("REDIS_URL", "redis+sentinel://s1:26379,s2:x/mymaster"),
        ("REDIS_URL", "redis+sentinel://s1:26379"),
        ("REDIS_URL", "redis+sentinel://s1:26379/mymaster/zero"),
        ("REDIS_URL", "redis+cluster://n1:7000/1"),
        ("REDIS_URL", "redis+cluster://n1:seven"),
        ("REDIS_URL", "redis+cluster://n1:7000?timeout=1"),
        ("RESULT_TTL", "0"),
        ("REDIS_MAX_CONNECTIONS", "0"),
        ("REDIS_TIMEOUT", "-1"),
        ("MAX_RESULT_BYTES", "1"),
        ("COMPRESSION_ENCODINGS", "gzip,deflate"),
        ("COMPRESSION_ENCODINGS", "gzip,gzip"),
        ("COMPRESSION_ZSTD_LEVEL", "20"),
        ("COMPRESSION_ZSTD_LEVEL", "0"),
        ("COMPRESSION_BR_LEVEL", "12"),
        ("COMPRESSION_GZIP_LEVEL", "0"),
        ("COMPRESSION_GZIP_LEVEL", "fast"),
        ("METRICS_PORT", "70000"),
        ("METRICS_PORT", "metrics"),
        ("CACHE_PREFIX", "a:b"),
        ("ADMIN_TOKEN", "short"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        read(**{variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")


def test_a_bad_database_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        read(DATABASE_URL="mysql://root:hunter2@db/x")
    assert "hunter2" not in str(caught.value)


def test_settings_built_in_code_are_validated_too() -> None:
    with pytest.raises(ConfigurationError, match="DB_POOL_SIZE"):
        Settings(db_pool_size=0)


def test_repr_shows_no_secrets() -> None:
    settings = read(DATABASE_URL="postgresql://app:hunter2@db/x", ADMIN_TOKEN="t0ken-" + "x" * 20)
    assert "hunter2" not in repr(settings)
    assert "t0ken" not in repr(settings)
