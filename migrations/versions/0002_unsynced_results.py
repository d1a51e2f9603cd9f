"""Durable record of writes that could not reach the shared cache, and a size guard.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

``unsynced_results`` holds, per shared cache namespace and id, the newest version whose
write could not be put into Redis. The namespace (the cache prefix and ``results``)
keeps deployments that share a database but not a cache from repairing, or distrusting,
each other's cache. A row is written before the write is acknowledged and removed once Redis
holds that version (or a newer one); while it exists no replica trusts Redis for the
id, so neither a restart nor a Redis that comes back with older entries can hide an
acknowledged write.

``stored_text_within(text, bigint)`` (PostgreSQL) returns a document's stored text, or
raises when it exceeds the given number of bytes. A write returns its stored text, so
calling it there aborts the write itself: JSONB prints numbers in full (``1e-16383``
is 16,392 characters), so without it a small request could become a very large
stored, cached and served document.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STORED_TEXT_WITHIN = """
CREATE FUNCTION stored_text_within(doc text, max_bytes bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF max_bytes IS NOT NULL AND octet_length(doc) > max_bytes THEN
        RAISE EXCEPTION 'stored document would be % bytes', octet_length(doc)
            USING ERRCODE = '54000', DETAIL = octet_length(doc)::text;
    END IF;
    RETURN doc;
END
$$
"""


def upgrade() -> None:
    key = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    op.create_table(
        "unsynced_results",
        sa.Column("cache", key, primary_key=True),
        sa.Column("analysis_id", key, primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column(
            "noted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(STORED_TEXT_WITHIN)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION stored_text_within(text, bigint)")
    op.drop_table("unsynced_results")
