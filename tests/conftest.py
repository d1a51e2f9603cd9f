"""Fixtures and hooks: a throw-away PostgreSQL database per test run, pools, stores, HTTP
clients, and the markers that say which servers and programs a test needs.

The real server at TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
gets a database named ``svc_test_<random>`` for the session, dropped at the end; Redis is
the one at TEST_REDIS_URL (default redis://127.0.0.1:6379/0). The helpers the tests share
live in ``tests/helpers.py``.

Markers (registered in pyproject.toml): ``postgres``, ``redis`` and ``tools`` say what a
test needs besides Python, so ``pytest -m "not postgres and not redis and not tools"``
runs on a bare machine. A test that uses a fixture of :data:`SERVER_FIXTURES` (directly
or through another fixture) gets that fixture's marker here; tests that reach a server
or a program some other way carry the marker themselves (``pytestmark``, a decorator, or
``pytest.param(..., marks=...)``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.config import Settings
from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from tests.helpers import (
    ADMIN_URL,
    REDIS_URL,
    ClientFactory,
    forget_prefix,
    fresh_database,
    service_url,
    unique_prefix,
)
from tests.support.watchdog import Watchdog

SERVER_FIXTURES = {"pg_admin_url": "postgres", "redis_url": "redis"}
"""Fixture name -> the marker of every test that uses it."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="fault suite and soak: minutes of load per scenario; print each ledger",
    )


TEST_DEADLINE = float(os.environ.get("TEST_DEADLINE", "300"))
"""Seconds one test may run before the watchdog dumps every task and cancels it
(TEST_DEADLINE; ``--long`` runs get an hour; ``@pytest.mark.deadline(s)`` for a test
that runs a whole suite again)."""

_watchdog = Watchdog(TEST_DEADLINE)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--long"):
        _watchdog.seconds = max(_watchdog.seconds, 3600.0)


@pytest.fixture(scope="session", autouse=True)
async def _watch_the_loop() -> None:
    """Tell the watchdog which loop the tests run in."""
    _watchdog.loop = asyncio.get_running_loop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _watchdog.watching(None, _own_deadline(item)):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    code = getattr(getattr(item, "function", None), "__code__", None)
    with _watchdog.watching(code, _own_deadline(item)):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with _watchdog.watching(None, _own_deadline(item)):
        return (yield)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for dump in _watchdog.dumps:
        terminalreporter.section("hung test")
        terminalreporter.write_line(dump)


def _own_deadline(item: pytest.Item) -> float | None:
    marker = item.get_closest_marker("deadline")
    return float(marker.args[0]) if marker else None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with what its fixtures need (see SERVER_FIXTURES)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marker in SERVER_FIXTURES.items():
            if fixture in used:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The libpq DSN of the PostgreSQL server the tests make their databases on
    (TEST_POSTGRES_URL). Ask for it to reach that server: it marks the test ``postgres``."""
    return ADMIN_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis (TEST_REDIS_URL). Ask for it to reach that server: it marks the
    test ``redis``."""
    return REDIS_URL


@pytest.fixture(scope="session")
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test run, migrated, dropped afterwards."""
    async with fresh_database("svc_test", pg_admin_url) as dsn:
        url = service_url(dsn)
        async with ConnectionPool(url) as pool:
            await upgrade(pool)
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh embedded database file for one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'results.sqlite3'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, pg_url: str, sqlite_url: str) -> str:
    """Run the test once on PostgreSQL and once on the embedded SQLite default."""
    return pg_url if request.param == "postgresql" else sqlite_url


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[ConnectionPool]:
    """A small pool on the PostgreSQL test database."""
    async with ConnectionPool(pg_url, pool_size=5, max_overflow=2, pool_timeout=5) as pool:
        yield pool


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ResultStore]:
    """A ResultStore on each backend in turn (migrated)."""
    async with ConnectionPool(database_url) as pool:
        await upgrade(pool)
        yield ResultStore(pool)


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A cache key prefix of this test's own; its Redis keys are removed afterwards."""
    name = unique_prefix()
    yield name
    await forget_prefix(name)


@pytest.fixture
async def pg_store(pool: ConnectionPool) -> ResultStore:
    """A ResultStore on the PostgreSQL test database (migrated)."""
    await upgrade(pool)
    return ResultStore(pool)


@pytest.fixture
def make_client() -> ClientFactory:
    """``async with make_client(database_url=..., **settings) as client``: the app, in process.

    The ASGI lifespan runs as under uvicorn (pool opened, migrations applied, pool closed).
    """

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(Settings(**overrides))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
                yield client

    return factory


@pytest.fixture
async def client(make_client: ClientFactory, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app, once per backend."""
    async with make_client(database_url=database_url) as client:
        yield client
