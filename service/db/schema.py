"""The tables the queries run against (SQLAlchemy Core).

The DDL itself lives in ``migrations/``; this module only describes the columns the
queries use, so a change here must come with a migration.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, MetaData, Table, Text, func
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

results = Table(
    "results",
    metadata,
    # "C" collation on PostgreSQL: ids compare bytewise, as on SQLite, so keyset pages
    # come in the same order on both and comparisons skip the locale machinery.
    Column("analysis_id", Text().with_variant(Text(collation="C"), "postgresql"), primary_key=True),
    # NULL marks a deleted result (a tombstone): keeping the row keeps the version
    # counting up, so an ETag is never reused for different content.
    Column("result", JSON().with_variant(JSONB(), "postgresql"), nullable=True),
    Column("version", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Writes whose version could not be put into the shared cache (Redis): while an id has
# a row here, no replica of that cache namespace serves it from Redis. See ResultCache.
unsynced_results = Table(
    "unsynced_results",
    metadata,
    Column("cache", Text().with_variant(Text(collation="C"), "postgresql"), primary_key=True),
    Column("analysis_id", Text().with_variant(Text(collation="C"), "postgresql"), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("noted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
