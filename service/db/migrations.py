"""Apply the alembic migrations in ``migrations/`` from asyncio code.

``service migrate`` and start-up both call :func:`upgrade`. On PostgreSQL it holds a
transaction-scoped advisory lock, so replicas starting together run the migrations
once and the others wait, then find nothing to do. On SQLite ``BEGIN IMMEDIATE``
serializes migrators the same way. Migrations are transactional on both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from service.db.pool import ConnectionPool
from service.errors import ConfigurationError

logger = logging.getLogger(__name__)

# An arbitrary constant that names "schema migration" among advisory locks.
MIGRATION_LOCK_KEY = 0x5E4_71CE_0001


def script_location() -> Path:
    """The migrations folder: inside the installed wheel, or at the top of a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigurationError("migrations", f"no alembic env.py under {package}")


def alembic_config() -> Config:
    """An alembic Config pointing at our scripts, with no ini file needed."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def head_revision() -> str | None:
    """The newest revision the scripts define."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(pool: ConnectionPool) -> str | None:
    """The revision the database is at (None before the first migration)."""
    async with pool.connection() as conn:
        return await conn.run_sync(_current)


async def upgrade(pool: ConnectionPool, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; return the revisions before and after."""
    async with pool.transaction() as conn:
        if pool.dialect == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        before, after = await conn.run_sync(_upgrade, revision)
    if before != after:
        logger.info("database migrated from=%s to=%s", before or "empty", after)
    return before, after


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Connection, revision: str) -> tuple[str | None, str | None]:
    before = _current(conn)
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)
    return before, _current(conn)
