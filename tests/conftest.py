"""Fixtures: a throw-away PostgreSQL database per test run, pools, stores and HTTP clients.

The real server at TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
creates a database named ``svc_test_<random>`` for the session and drops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.config import Settings
from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="fault suite and soak: minutes of load per scenario; print each ledger",
    )


def unique_id(prefix: str = "t") -> str:
    """An analysis id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def fresh_database(prefix: str, admin_dsn: str = ADMIN_URL) -> AsyncIterator[str]:
    """``CREATE DATABASE <prefix>_<random>`` on the server of ``admin_dsn``; yields its
    libpq DSN (for asyncpg); ``DROP DATABASE ... WITH (FORCE)`` afterwards, also on failure."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{admin_dsn.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def service_url(dsn: str) -> str:
    """The SQLAlchemy URL (asyncpg driver) of a libpq DSN."""
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test run, migrated, dropped afterwards."""
    async with fresh_database("svc_test") as dsn:
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
