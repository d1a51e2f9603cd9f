"""The optimizer's history: snapshots of query statistics and table sizes, and what
changed between the last two.

PgHero keeps query stats and space over time in tables of its own; so does this. A
snapshot is one row of ``service_optimizer_snapshots`` in the database it describes
(created by the first snapshot): the statements ``pg_stat_statements`` has seen in this
database, with their cumulative calls and time, and each table's size and rows. The
report compares the newest snapshot with the one before it: statements whose mean
time in between grew against their mean until then, and the tables that grew fastest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.diagnostics import Thresholds, has_extension, rows
from service.db.report import Check, Finding, pretty_bytes

TABLE = "service_optimizer_snapshots"
"""Where snapshots are kept, in the database they describe."""
KEEP = 1000
"""Snapshots kept by default; older ones are deleted as new ones are taken."""
MAX_STATEMENTS = 500
"""Statements per snapshot, by total time (pg_stat_statements keeps 5,000 by default)."""

_CREATE = """
CREATE TABLE IF NOT EXISTS service_optimizer_snapshots (
    id bigserial PRIMARY KEY,
    taken_at timestamptz NOT NULL DEFAULT now(),
    statements jsonb NOT NULL,
    tables jsonb NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot taken: its id, when, and how many statements and tables it holds."""

    id: int
    taken_at: datetime
    statements: int
    tables: int
    note: str | None = None
    """Why it holds no statements, when pg_stat_statements could not be read."""


async def take(conn: AsyncConnection, keep: int = KEEP) -> Snapshot:
    """Record the statements' statistics and the tables' sizes now; keep the newest
    ``keep`` snapshots. ``conn`` is an autocommit connection."""
    await conn.exec_driver_sql(_CREATE)
    statements = await _statements(conn)
    note = statements if isinstance(statements, str) else None
    found = [] if isinstance(statements, str) else statements
    tables = await rows(
        conn,
        """
        SELECT format('%I.%I', schemaname, relname) AS "table",
               pg_total_relation_size(relid) AS bytes, n_live_tup AS rows
        FROM pg_stat_user_tables
        WHERE relname <> 'service_optimizer_snapshots'
        ORDER BY 1
        """,
    )
    taken = await rows(
        conn,
        """
        INSERT INTO service_optimizer_snapshots (statements, tables)
        VALUES (CAST(:statements AS jsonb), CAST(:tables AS jsonb))
        RETURNING id, taken_at
        """,
        statements=orjson.dumps(found).decode(),
        tables=orjson.dumps(tables).decode(),
    )
    await conn.execute(
        text("DELETE FROM service_optimizer_snapshots WHERE id <= :through"),
        {"through": taken[0]["id"] - keep},  # all but the newest `keep`
    )
    return Snapshot(taken[0]["id"], taken[0]["taken_at"], len(found), len(tables), note)


async def taken_within(conn: AsyncConnection, seconds: float) -> bool:
    """Whether a snapshot was taken in the last ``seconds`` (by anyone)."""
    if not await _exists(conn):
        return False
    found = await rows(
        conn,
        "SELECT count(*) AS n FROM service_optimizer_snapshots"
        " WHERE taken_at > now() - make_interval(secs => :seconds)",
        seconds=seconds,
    )
    return bool(found[0]["n"])


async def changes(conn: AsyncConnection, limits: Thresholds) -> Check:
    """What changed between the two newest snapshots (a report check)."""
    name, title = "changes", "Changes since the previous snapshot"
    source = (
        "PgHero query stats and space history; ours: a statement whose mean grew by"
        f" {limits.mean_growth:.0%} over at least {limits.changed_calls} calls, and the"
        f" {limits.growing_tables} tables that grew fastest"
    )
    pair = (
        await rows(
            conn,
            "SELECT id, taken_at, statements, tables FROM service_optimizer_snapshots"
            " ORDER BY id DESC LIMIT 2",
        )
        if await _exists(conn)
        else []
    )
    if len(pair) < 2:
        return Check(
            name,
            title,
            source,
            ran=False,
            note="needs two snapshots: QueryOptimizer.snapshot(), `service db snapshot`,"
            " or DB_MAINTENANCE_INTERVAL (each periodic run takes one)",
        )
    newer, older = pair
    hours = max((newer["taken_at"] - older["taken_at"]).total_seconds() / 3600, 1e-9)
    span = f"between snapshots {older['id']} and {newer['id']} ({hours * 60:.0f} min)"
    findings = [*_slower(older, newer, limits, span), *_growing(older, newer, hours, limits, span)]
    return Check(name, title, source, findings=tuple(findings))


def _slower(
    older: dict[str, Any], newer: dict[str, Any], limits: Thresholds, span: str
) -> list[Finding]:
    before = {row["queryid"]: row for row in older["statements"]}
    findings = []
    for row in newer["statements"]:
        was = before.get(row["queryid"])
        if was is None or not was["calls"]:
            continue
        calls = row["calls"] - was["calls"]
        if calls < limits.changed_calls:  # too few to judge, or the statistics were reset
            continue
        mean_before = was["total_ms"] / was["calls"]
        mean_since = (row["total_ms"] - was["total_ms"]) / calls
        if mean_since < mean_before * (1 + limits.mean_growth) or mean_since - mean_before < 1:
            continue
        findings.append(
            Finding(
                subject=f"query {row['queryid']}",
                detail=f"mean {mean_since:.1f} ms over {calls} calls {span}, against"
                f" {mean_before:.1f} ms before: {row['query'][:200]}",
                recommendation="find what changed for it (a plan, the data it reads, a"
                " lock): EXPLAIN (ANALYZE, BUFFERS) it, and see the other checks",
                saves=f"{(mean_since - mean_before) * calls / 1000:.1f} s of database time"
                " over the same calls",
                data={
                    "queryid": row["queryid"],
                    "calls": calls,
                    "mean_ms_before": mean_before,
                    "mean_ms_since": mean_since,
                },
            )
        )
    return findings


def _growing(
    older: dict[str, Any], newer: dict[str, Any], hours: float, limits: Thresholds, span: str
) -> list[Finding]:
    before = {row["table"]: row for row in older["tables"]}
    grown = sorted(
        (
            (row["bytes"] - before[row["table"]]["bytes"], row)
            for row in newer["tables"]
            if row["table"] in before
        ),
        key=lambda pair: (-pair[0], pair[1]["table"]),
    )
    return [
        Finding(
            subject=row["table"],
            detail=f"grew {pretty_bytes(growth)} {span}, to {pretty_bytes(row['bytes'])}"
            f" ({pretty_bytes(growth / hours * 24)} a day at that rate);"
            f" {row['rows'] - before[row['table']]['rows']:+d} live rows",
            recommendation="make sure its growth is expected: old rows kept past their use"
            " and bloat look the same from here (see the bloat check)",
            severity="info",
            data={"table": row["table"], "grew": growth, "bytes": row["bytes"]},
        )
        for growth, row in grown[: limits.growing_tables]
        if growth >= limits.growing_min_bytes
    ]


async def _statements(conn: AsyncConnection) -> list[dict[str, Any]] | str:
    """This database's statements from pg_stat_statements, or why they cannot be read."""
    if not await has_extension(conn, "pg_stat_statements"):
        return "pg_stat_statements is not installed in this database"
    try:
        return await rows(
            conn,
            """
            SELECT queryid::text AS queryid, left(query, 1000) AS query, calls,
                   total_exec_time AS total_ms
            FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            ORDER BY total_exec_time DESC
            LIMIT :limit
            """,
            limit=MAX_STATEMENTS,
        )
    except DBAPIError as exc:  # created but not preloaded: the view raises
        return f"pg_stat_statements cannot be read: {str(exc.orig).splitlines()[0]}"


async def _exists(conn: AsyncConnection) -> bool:
    found = await rows(conn, "SELECT to_regclass(:name) IS NOT NULL AS yes", name=TABLE)
    return bool(found[0]["yes"])
