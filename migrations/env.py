"""Alembic environment: runs on the connection ``service.db.migrations`` hands over.

Run through the ``alembic`` command line instead, it opens its own connection from
the service's settings (``DATABASE_URL``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from service.db.schema import metadata


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    from service.config import Settings
    from service.wiring import connection_pool

    pool = connection_pool(Settings.from_environ())
    async with pool, pool.transaction() as conn:
        await conn.run_sync(run_on)


given = context.config.attributes.get("connection")
if given is not None:
    run_on(given)
elif context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `service migrate`")
else:
    asyncio.run(run_from_settings())
