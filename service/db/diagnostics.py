"""The checks of :meth:`QueryOptimizer.report` on PostgreSQL, one function each.

Rules and default thresholds follow PgHero (ankane/pghero), which operators already
trust, except where noted; each :class:`~service.db.report.Check` names its source.
Every identifier that reaches a recommended statement is quoted by the server
(``quote_ident`` / ``format('%I')``) in the query that reads it, never pasted here.
All checks read the statistics views and catalogs only: they take no locks a busy
database would notice. Deparsing an index (``pg_get_indexdef``) does take ACCESS SHARE on
its table, and sizing one on the index, which waits behind a LOCK TABLE, ALTER or REINDEX:
the index checks wait at most :data:`LOCK_WAIT_MS` and then say they were skipped, so a
report never hangs on the very lock its blocked_queries check is there to show.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.pool import sqlstate
from service.db.report import Check, Finding, pretty_bytes

TX_WRAPAROUND_LIMIT = 2_146_483_648
"""Transaction-ID age at which PostgreSQL stops accepting writes (PgHero's figure)."""
LOCK_WAIT_MS = 1000
"""How long a check waits for a lock on an index or table before it skips."""
_LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a check speaks up. Defaults are PgHero's unless the field says otherwise."""

    unused_index_max_scans: int = 50
    missing_index_min_rows: int = 10_000
    missing_index_max_share: float = 95.0
    """Percent of scans that used an index, below which a big table is a candidate."""
    missing_index_min_seq_scans: int = 50
    """Ours: PgHero skips tables with no index scans at all; we judge them once they have
    seen this many sequential scans, since a table with no index is the clearest case."""
    cache_hit_ratio: float = 0.99
    cache_min_blocks: int = 10_000
    """Ours: below this many block accesses a ratio says nothing (a fresh database)."""
    total_connections: int = 500
    long_running_seconds: float = 60.0
    sequence_share: float = 0.9
    tx_ids_left: int = 10_000_000
    autovacuum_ids_left: int = 2_000_000
    slow_query_ms: float = 20.0
    slow_query_calls: int = 100
    replication_lag_seconds: float = 30.0
    """Ours: how far behind (replay) a standby may be before it is reported."""
    replication_lag_bytes: int = 256 * 1024 * 1024
    """Ours: WAL a standby may have to replay (or, seen from the primary, to receive and
    replay) before it is reported, however recent the last replayed commit."""
    forced_checkpoints: int = 10
    """Ours: checkpoints forced by WAL volume (and more of them than timed ones) before
    max_wal_size is reported as too small."""
    temp_bytes: int = 1024 * 1024 * 1024
    """Ours: bytes this database's queries spilled to temporary files since statistics
    were reset, from which a default-sized work_mem is reported."""
    mean_growth: float = 0.5
    """Ours: how much a statement's mean time between two snapshots must exceed its mean
    until the first for the report's history to name it."""
    changed_calls: int = 10
    """Ours: calls between two snapshots below which a statement's mean is not judged."""
    growing_tables: int = 5
    """Ours: how many of the fastest-growing tables the history names."""
    growing_min_bytes: int = 1024 * 1024
    """Ours: growth between two snapshots below which a table is not named."""
    bloat_min_bytes: int = 10 * 1024 * 1024
    """Ours: space a table or index wastes, below which bloat is not worth a rewrite."""
    bloat_share: float = 0.5
    """Ours: the share of a table or index that is waste, from which it is reported."""


Rows = list[dict[str, Any]]
CheckFn = Callable[[AsyncConnection, Thresholds], Awaitable[Check]]


async def rows(conn: AsyncConnection, sql: str, **params: Any) -> Rows:
    """The result of ``sql`` as a list of dicts."""
    result = await conn.execute(text(sql), params)
    return [dict(row) for row in result.mappings()]


@contextlib.asynccontextmanager
async def pinned(conn: AsyncConnection) -> AsyncIterator[None]:
    """A transaction on an autocommit connection, for statements that share session
    state (a ``SET LOCAL``, a prepared statement, hypopg's hypothetical indexes).

    Behind PgBouncer in transaction mode only a transaction keeps one server
    connection; directly on PostgreSQL it also scopes the settings, so nothing needs
    resetting. A transaction that cannot be rolled back takes its connection out of
    the pool rather than hand it on still open.
    """
    await conn.exec_driver_sql("BEGIN")
    try:
        yield
    except BaseException:
        try:
            await asyncio.shield(conn.exec_driver_sql("ROLLBACK"))
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.invalidate()
        raise
    await conn.exec_driver_sql("COMMIT")


async def rows_or_locked(conn: AsyncConnection, sql: str, **params: Any) -> Rows | str:
    """:func:`rows`, or why not if a lock it needs was not granted within LOCK_WAIT_MS."""
    try:
        async with pinned(conn):
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
            return await rows(conn, sql, **params)
    except DBAPIError as exc:
        if sqlstate(exc) != _LOCK_NOT_AVAILABLE:
            raise
        return (
            f"skipped: a lock on an index or its table was not granted within"
            f" {LOCK_WAIT_MS / 1000:g} s (see blocked_queries); run the report again later"
        )


async def unused_indexes(conn: AsyncConnection, limits: Thresholds) -> Check:
    name, title = "unused_indexes", "Unused indexes"
    source = f"PgHero unused_indexes: not unique, at most {limits.unused_index_max_scans} scans"
    found = await rows_or_locked(
        conn,
        """
        SELECT format('%I.%I', s.schemaname, s.indexrelname) AS index,
               format('%I.%I', s.schemaname, s.relname) AS "table",
               s.idx_scan AS scans, pg_relation_size(s.indexrelid) AS size
        FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
        WHERE NOT i.indisunique AND i.indisvalid AND s.idx_scan <= :max_scans
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)
        ORDER BY size DESC, 1
        """,
        max_scans=limits.unused_index_max_scans,
    )
    if isinstance(found, str):
        return Check(name, title, source, ran=False, note=found)
    findings = tuple(
        Finding(
            subject=row["index"],
            detail=(
                f"{row['scans']} scans since statistics were reset;"
                f" {pretty_bytes(row['size'])} on {row['table']}"
            ),
            recommendation=(
                "drop it if no rare job (a report, a replica's reads) needs it;"
                " replicas keep their own statistics"
            ),
            ddl=f"DROP INDEX CONCURRENTLY {row['index']};",
            saves=f"{pretty_bytes(row['size'])} of disk and cache, and a write on every change",
            data=row,
        )
        for row in found
    )
    return Check(name, title, source, findings=findings)


@dataclass(frozen=True, slots=True)
class _Index:
    name: str
    table: str
    method: str
    keys: tuple[str, ...]
    """Each key column's definition with its operator class, collation and order."""
    included: int
    predicate: str | None
    unique: bool
    primary: bool
    size: int


async def _indexes(conn: AsyncConnection) -> list[_Index] | str:
    found = await rows_or_locked(
        conn,
        """
        SELECT format('%I.%I', n.nspname, ic.relname) AS name,
               format('%I.%I', n.nspname, tc.relname) AS "table",
               am.amname AS method,
               ARRAY(
                   SELECT pg_get_indexdef(i.indexrelid, k, true)
                          || ' ' || COALESCE(i.indclass[k - 1]::text, '')
                          || ' ' || COALESCE(i.indcollation[k - 1]::text, '')
                          || ' ' || COALESCE(i.indoption[k - 1]::text, '')
                   FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k
               ) AS keys,
               i.indnatts - i.indnkeyatts AS included,
               pg_get_expr(i.indpred, i.indrelid) AS predicate,
               i.indisunique AS unique, i.indisprimary AS primary,
               pg_relation_size(i.indexrelid) AS size
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = tc.relnamespace
        JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indisvalid AND i.indislive
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%'
        ORDER BY 1
        """,
    )
    if isinstance(found, str):
        return found
    return [_Index(**{**row, "keys": tuple(row["keys"])}) for row in found]


async def duplicate_indexes(conn: AsyncConnection, limits: Thresholds) -> Check:
    """An index is unneeded when another valid index on the same table, with the same
    method and predicate, starts with the same key columns (same expressions, operator
    classes, collations and order). Unique and primary-key indexes are never the
    unneeded one: they enforce a rule, not only speed a read."""
    name, title = "duplicate_indexes", "Duplicate indexes"
    source = "PgHero duplicate_indexes, extended to equal expressions and predicates"
    indexes = await _indexes(conn)
    if isinstance(indexes, str):
        return Check(name, title, source, ran=False, note=indexes)
    findings = []
    for index in indexes:
        if index.unique or index.primary or index.included:
            continue
        for other in indexes:
            if (
                other.name == index.name
                or other.table != index.table
                or other.method != index.method
                or other.predicate != index.predicate
            ):
                continue
            same = other.keys == index.keys
            prefix = index.method == "btree" and other.keys[: len(index.keys)] == index.keys
            # Of two identical indexes, keep a unique one, else the one whose name sorts first.
            if same and not other.unique and other.name > index.name:
                continue
            if same or prefix:
                findings.append(
                    Finding(
                        subject=index.name,
                        detail=f"{other.name} covers it (same method and predicate,"
                        f" its key columns start with this index's) on {index.table}",
                        recommendation=f"drop it: every scan it serves, {other.name} serves",
                        ddl=f"DROP INDEX CONCURRENTLY {index.name};",
                        saves=f"{pretty_bytes(index.size)}, and a write on every change",
                        data={"index": index.name, "covered_by": other.name, "size": index.size},
                    )
                )
                break
    return Check(name, title, source, findings=tuple(findings))


async def invalid_indexes(conn: AsyncConnection, limits: Thresholds) -> Check:
    name, title, source = "invalid_indexes", "Invalid indexes", "PgHero invalid_indexes"
    found = await rows_or_locked(
        conn,
        """
        SELECT format('%I.%I', n.nspname, c.relname) AS index,
               format('%I.%I', n.nspname, t.relname) AS "table",
               pg_get_indexdef(i.indexrelid) AS definition,
               pg_relation_size(i.indexrelid) AS size
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%'
        ORDER BY 1
        """,
    )
    if isinstance(found, str):
        return Check(name, title, source, ran=False, note=found)
    findings = tuple(
        Finding(
            subject=row["index"],
            detail=f"invalid (a CREATE INDEX CONCURRENTLY that failed) on {row['table']}:"
            f" no query uses it, yet every write still maintains it",
            recommendation="drop it, fix what made the build fail (duplicates for a unique"
            " index), then create it again concurrently",
            ddl=f"DROP INDEX CONCURRENTLY {row['index']};",
            saves=f"{pretty_bytes(row['size'])}, and a write on every change",
            severity="critical",
            data=row,
        )
        for row in found
    )
    return Check(name, title, source, findings=findings)


async def missing_indexes(conn: AsyncConnection, limits: Thresholds) -> Check:
    found = await rows(
        conn,
        """
        SELECT format('%I.%I', schemaname, relname) AS "table",
               seq_scan, COALESCE(idx_scan, 0) AS idx_scan, seq_tup_read,
               n_live_tup AS rows,
               100.0 * COALESCE(idx_scan, 0)
                 / NULLIF(seq_scan + COALESCE(idx_scan, 0), 0) AS index_share
        FROM pg_stat_user_tables
        WHERE n_live_tup >= :min_rows
          AND seq_scan + COALESCE(idx_scan, 0) > 0
          AND (COALESCE(idx_scan, 0) > 0 OR seq_scan >= :min_seq_scans)
          AND 100.0 * COALESCE(idx_scan, 0) / (seq_scan + COALESCE(idx_scan, 0)) < :max_share
        ORDER BY n_live_tup DESC, 1
        """,
        min_rows=limits.missing_index_min_rows,
        min_seq_scans=limits.missing_index_min_seq_scans,
        max_share=limits.missing_index_max_share,
    )
    findings = tuple(
        Finding(
            subject=row["table"],
            detail=f"{float(row['index_share']):.1f}% of {row['seq_scan'] + row['idx_scan']}"
            f" scans used an index; {row['rows']} rows, {row['seq_tup_read']} rows read by"
            " sequential scans",
            recommendation="index the columns its frequent queries filter on; the"
            " suggested_indexes check names them when pg_stat_statements and hypopg are"
            " installed",
            saves=f"reading {row['rows']} rows on every such query",
            data={**row, "index_share": float(row["index_share"])},
        )
        for row in found
    )
    return Check(
        "missing_indexes",
        "Tables that may need an index",
        f"PgHero missing_indexes: under {limits.missing_index_max_share:g}% index scans and at"
        f" least {limits.missing_index_min_rows} rows",
        findings=findings,
    )


async def vacuum_and_analyze(conn: AsyncConnection, limits: Thresholds) -> Check:
    """Autovacuum's own trigger (threshold + scale factor x rows, the server's settings,
    or the table's own when set): a table past it has been waiting for a vacuum or an
    analyze that has not come, because autovacuum is off, behind, or blocked."""
    found = await rows(
        conn,
        """
        WITH settings AS (
            SELECT current_setting('autovacuum_vacuum_threshold')::float8 AS vt,
                   current_setting('autovacuum_vacuum_scale_factor')::float8 AS vs,
                   current_setting('autovacuum_analyze_threshold')::float8 AS at,
                   current_setting('autovacuum_analyze_scale_factor')::float8 AS as_
        )
        SELECT format('%I.%I', s.schemaname, s.relname) AS "table",
               s.n_live_tup AS live, s.n_dead_tup AS dead,
               s.n_mod_since_analyze AS modified,
               s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
               c.relpages::bigint * current_setting('block_size')::bigint AS size,
               st.vt + st.vs * GREATEST(c.reltuples, 0) AS vacuum_at,
               st.at + st.as_ * GREATEST(c.reltuples, 0) AS analyze_at
        FROM pg_stat_user_tables s
        JOIN pg_class c ON c.oid = s.relid, settings st
        ORDER BY 1
        """,
    )
    findings = []
    for row in found:
        when = {k: row[k] for k in ("last_vacuum", "last_autovacuum")}
        table = row["table"]
        if row["dead"] > row["vacuum_at"]:
            share = row["dead"] / max(row["live"] + row["dead"], 1)
            findings.append(
                Finding(
                    subject=table,
                    detail=f"{row['dead']} dead rows ({share:.0%}) past autovacuum's trigger of"
                    f" {row['vacuum_at']:.0f}; last vacuum {_last(when)}",
                    recommendation="vacuum it now, and see why autovacuum has not"
                    " (autovacuum_enabled, long transactions holding the horizon)",
                    ddl=f"VACUUM (ANALYZE) {table};",
                    saves=f"space of {row['dead']} dead rows for reuse, and scans that skip them",
                    data=row,
                )
            )
        elif row["modified"] > row["analyze_at"]:
            findings.append(
                Finding(
                    subject=table,
                    detail=f"{row['modified']} rows changed since the last analyze"
                    f" ({_last({k: row[k] for k in ('last_analyze', 'last_autoanalyze')})})",
                    recommendation="analyze it, so the planner's estimates match the data",
                    ddl=f"ANALYZE {table};",
                    saves="plans chosen on stale row counts",
                    data=row,
                )
            )
    return Check(
        "vacuum_analyze",
        "Dead rows and stale statistics",
        "PostgreSQL autovacuum trigger (routine-vacuuming), as PgHero's maintenance_info",
        findings=tuple(findings),
    )


def _last(times: dict[str, Any]) -> str:
    seen = {name: when for name, when in times.items() if when is not None}
    if not seen:
        return "never"
    name, when = max(seen.items(), key=lambda item: item[1])
    return f"{when.isoformat(timespec='seconds')} ({'auto' if 'auto' in name else 'manual'})"


async def transaction_ids(conn: AsyncConnection, limits: Thresholds) -> Check:
    found = await rows(
        conn,
        """
        SELECT format('%I.%I', n.nspname, c.relname) AS "table",
               GREATEST(age(c.relfrozenxid), age(t.relfrozenxid)) AS age,
               current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
        WHERE c.relkind IN ('r', 'm')
          AND (:limit - GREATEST(age(c.relfrozenxid), age(t.relfrozenxid)) < :ids_left
            OR current_setting('autovacuum_freeze_max_age')::bigint
               - GREATEST(age(c.relfrozenxid), age(t.relfrozenxid)) < :autovacuum_left)
        ORDER BY age DESC
        """,
        limit=TX_WRAPAROUND_LIMIT,
        ids_left=limits.tx_ids_left,
        autovacuum_left=limits.autovacuum_ids_left,
    )
    findings = []
    for row in found:
        left = TX_WRAPAROUND_LIMIT - row["age"]
        critical = left < limits.tx_ids_left
        findings.append(
            Finding(
                subject=row["table"],
                detail=f"oldest unfrozen transaction ID is {row['age']} old: {left} left"
                " before PostgreSQL stops writes",
                recommendation="freeze it now; find what kept autovacuum from doing so"
                if critical
                else "an anti-wraparound autovacuum is due; make sure nothing blocks it",
                ddl=f"VACUUM (FREEZE, ANALYZE) {row['table']};",
                saves="a database that refuses writes until vacuumed in single-user mode",
                severity="critical" if critical else "warning",
                data={**row, "left": left},
            )
        )
    return Check(
        "transaction_id_wraparound",
        "Transaction ID wraparound",
        f"PgHero transaction_id_danger ({limits.tx_ids_left} left) and autovacuum_danger"
        f" ({limits.autovacuum_ids_left} before forced autovacuum)",
        findings=tuple(findings),
    )


async def cache_hit_ratio(conn: AsyncConnection, limits: Thresholds) -> Check:
    found = await rows(
        conn,
        """
        SELECT 'heap' AS kind, sum(heap_blks_hit) AS hit, sum(heap_blks_read) AS read
        FROM pg_statio_user_tables
        UNION ALL
        SELECT 'index', sum(idx_blks_hit), sum(idx_blks_read) FROM pg_statio_user_indexes
        """,
    )
    findings = []
    for row in found:
        hit, read = int(row["hit"] or 0), int(row["read"] or 0)
        if hit + read < max(limits.cache_min_blocks, 1):
            continue  # too few block accesses (none, with no index yet): no ratio to judge
        ratio = hit / (hit + read)
        if ratio < limits.cache_hit_ratio:
            findings.append(
                Finding(
                    subject=f"{row['kind']} blocks",
                    detail=f"{ratio:.2%} of {row['kind']} block reads hit shared buffers",
                    recommendation="the working set does not fit in memory: raise"
                    " shared_buffers (and the machine's memory), or drop unused indexes",
                    saves="reads from disk (or the OS cache) on hot queries",
                    data={"ratio": ratio, "hit": hit, "read": read},
                )
            )
    return Check(
        "cache_hit_ratio",
        "Cache hit ratio",
        f"PgHero cache_hit_rate_threshold ({limits.cache_hit_ratio:.0%}); judged from"
        f" {limits.cache_min_blocks} block accesses",
        findings=tuple(findings),
    )


async def connections(conn: AsyncConnection, limits: Thresholds) -> Check:
    found = await rows(
        conn,
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE state = 'idle in transaction'
                 AND datname = current_database()
                 AND now() - state_change > make_interval(secs => :long)) AS stuck,
               current_setting('max_connections')::int AS max
        FROM pg_stat_activity WHERE backend_type = 'client backend'
        """,
        long=limits.long_running_seconds,
    )
    row = found[0]
    findings = []
    if row["total"] > limits.total_connections:
        findings.append(
            Finding(
                subject="connections",
                detail=f"{row['total']} connections of {row['max']} allowed",
                recommendation="put a pooler (PgBouncer) in front, or lower the pools'"
                " sizes: each connection is a process with its own memory",
                saves="memory and the risk of refusing connections",
                data=row,
            )
        )
    if row["stuck"]:
        findings.append(
            Finding(
                subject="idle in transaction",
                detail=f"{row['stuck']} sessions idle in a transaction for over"
                f" {limits.long_running_seconds:g} s: they hold locks and stop vacuum",
                recommendation="fix the client that leaves transactions open; set"
                " idle_in_transaction_session_timeout",
                saves="blocked writers and tables vacuum cannot clean",
                data=row,
            )
        )
    return Check(
        "connections",
        "Connections",
        f"PgHero total_connections_threshold ({limits.total_connections}) and connection_states",
        findings=tuple(findings),
    )


async def long_running_queries(conn: AsyncConnection, limits: Thresholds) -> Check:
    found = await rows(
        conn,
        """
        SELECT pid, state, usename AS "user", application_name AS source,
               EXTRACT(EPOCH FROM now() - COALESCE(query_start, xact_start))::float8
                 AS seconds,
               left(query, 500) AS query
        FROM pg_stat_activity
        WHERE state <> 'idle' AND pid <> pg_backend_pid() AND datname = current_database()
          AND now() - COALESCE(query_start, xact_start) > make_interval(secs => :long)
        ORDER BY seconds DESC
        """,
        long=limits.long_running_seconds,
    )
    findings = tuple(
        Finding(
            subject=f"pid {row['pid']}",
            detail=f"running for {row['seconds']:.0f} s ({row['state']}): {row['query']}",
            recommendation="cancel it if it should not take this long; it holds a snapshot"
            " that keeps vacuum from cleaning",
            ddl=f"SELECT pg_cancel_backend({int(row['pid'])});",
            saves="locks, a held vacuum horizon, and a connection",
            data=row,
        )
        for row in found
    )
    return Check(
        "long_running_queries",
        "Long-running queries",
        f"PgHero long_running_query_sec ({limits.long_running_seconds:g} s)",
        findings=findings,
    )


async def blocked_queries(conn: AsyncConnection, limits: Thresholds) -> Check:
    found = await rows(
        conn,
        """
        SELECT blocked.pid, left(blocked.query, 500) AS query,
               EXTRACT(EPOCH FROM now() - blocked.query_start)::float8 AS seconds,
               pg_blocking_pids(blocked.pid) AS blocked_by,
               blocker.state AS blocking_state, left(blocker.query, 500) AS blocking_query
        FROM pg_stat_activity blocked
        LEFT JOIN pg_stat_activity blocker ON blocker.pid = (pg_blocking_pids(blocked.pid))[1]
        WHERE cardinality(pg_blocking_pids(blocked.pid)) > 0
          AND blocked.datname = current_database()
        ORDER BY seconds DESC
        """,
    )
    findings = tuple(
        Finding(
            subject=f"pid {row['pid']}",
            detail=f"waiting {row['seconds']:.1f} s on pid {row['blocked_by']}: {row['query']}",
            recommendation=f"end the blocking transaction if it is stuck ({row['blocking_state']}:"
            f" {row['blocking_query']})",
            # A blocker idle in its transaction has no query to cancel: only ending its
            # session releases the lock.
            ddl=f"SELECT {_ender(row['blocking_state'])}({int(row['blocked_by'][0])});",
            saves="every request queued behind the lock",
            severity="critical",
            data=row,
        )
        for row in found
    )
    return Check(
        "blocked_queries",
        "Blocked queries",
        "PgHero blocked_queries, by pg_blocking_pids()",
        findings=findings,
    )


def _ender(state: str | None) -> str:
    return "pg_cancel_backend" if state == "active" else "pg_terminate_backend"


async def sequences(conn: AsyncConnection, limits: Thresholds) -> Check:
    """A sequence is judged against the largest value its column can hold (an ``integer``
    column fed by a ``bigint`` sequence overflows at 2^31), as PgHero does."""
    found = await rows(
        conn,
        """
        SELECT format('%I.%I', s.schemaname, s.sequencename) AS sequence,
               format('%I.%I', tn.nspname, t.relname) AS "table",
               quote_ident(a.attname) AS "column",
               format_type(a.atttypid, a.atttypmod) AS column_type,
               s.data_type::text AS sequence_type, s.last_value,
               LEAST(s.max_value, CASE a.atttypid WHEN 'int2'::regtype THEN 32767
                                                  WHEN 'int4'::regtype THEN 2147483647
                                                  ELSE s.max_value END) AS max_value
        FROM pg_sequences s
        JOIN pg_class sc ON sc.relname = s.sequencename
        JOIN pg_namespace sn ON sn.oid = sc.relnamespace AND sn.nspname = s.schemaname
        LEFT JOIN pg_depend d ON d.objid = sc.oid AND d.classid = 'pg_class'::regclass
                              AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        LEFT JOIN pg_class t ON t.oid = d.refobjid
        LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE s.last_value IS NOT NULL
        ORDER BY 1
        """,
    )
    findings = []
    for row in found:
        share = row["last_value"] / row["max_value"]
        if share <= limits.sequence_share:
            continue
        widen: str | None = None
        if row["column"] and row["column_type"] in ("smallint", "integer"):
            widen = f"ALTER TABLE {row['table']} ALTER COLUMN {row['column']} TYPE bigint;"
            if row["sequence_type"] != "bigint":
                # A serial's sequence keeps its own type, and so its limit, when the column
                # widens: without this, inserts still fail at the same value.
                widen += f" ALTER SEQUENCE {row['sequence']} AS bigint;"
        findings.append(
            Finding(
                subject=row["sequence"],
                detail=f"at {row['last_value']} of {row['max_value']} ({share:.1%})"
                + (f", feeding {row['table']}.{row['column']}" if row["column"] else ""),
                recommendation="widen the column to bigint before inserts start failing"
                " (it rewrites the table: plan a window)"
                if widen
                else "raise the sequence's MAXVALUE or plan new ids before it runs out",
                ddl=widen,
                saves="inserts failing with 'nextval: reached maximum value'",
                severity="critical" if share > 0.97 else "warning",
                data={**row, "share": share},
            )
        )
    return Check(
        "sequences",
        "Sequences near their limit",
        f"PgHero sequence_danger (over {limits.sequence_share:.0%} of the column's maximum)",
        findings=tuple(findings),
    )


async def unindexed_foreign_keys(conn: AsyncConnection, limits: Thresholds) -> Check:
    """A foreign key is covered by a valid, non-partial index whose first columns are
    the key's columns (in any order). Without one, each delete or key change of a
    referenced row scans the referencing table for rows that point at it, and joins on
    the key cannot use an index."""
    name, title = "unindexed_foreign_keys", "Foreign keys without an index"
    source = "pg-index-health foreign_key_without_index (postgres_dba i3)"
    found = await rows(
        conn,
        """
        SELECT format('%I.%I', n.nspname, t.relname) AS "table",
               quote_ident(c.conname) AS "constraint",
               format('%I.%I', rn.nspname, r.relname) AS referenced,
               ARRAY(SELECT quote_ident(a.attname)
                     FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                     ORDER BY k.ord) AS columns,
               COALESCE(s.n_live_tup, 0) AS rows,
               pg_relation_size(c.conrelid) AS size
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        JOIN pg_class r ON r.oid = c.confrelid
        JOIN pg_namespace rn ON rn.oid = r.relnamespace
        LEFT JOIN pg_stat_user_tables s ON s.relid = c.conrelid
        WHERE c.contype = 'f'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND NOT EXISTS (
              SELECT 1 FROM pg_index i
              WHERE i.indrelid = c.conrelid AND i.indisvalid AND i.indpred IS NULL
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey
          )
        ORDER BY 1, 2
        """,
    )
    findings = tuple(
        Finding(
            subject=f"{row['table']}.{row['constraint']}",
            detail=f"{row['table']} ({', '.join(row['columns'])}) references"
            f" {row['referenced']} with no index starting with those columns;"
            f" {row['rows']} rows",
            recommendation="index the key's columns: a delete or key change in"
            f" {row['referenced']} then finds the rows that point at it by the index",
            ddl=f"CREATE INDEX CONCURRENTLY ON {row['table']} ({', '.join(row['columns'])});",
            saves=f"a scan of {row['table']} ({pretty_bytes(row['size'])}) on every delete or"
            f" key change in {row['referenced']}, and on joins by the key",
            data=row,
        )
        for row in found
    )
    return Check(name, title, source, findings=findings)


async def not_valid_constraints(conn: AsyncConnection, limits: Thresholds) -> Check:
    """A CHECK or FOREIGN KEY constraint added NOT VALID holds for new rows only until it
    is validated: the rows before it were never checked, and the planner cannot rely on
    it. Validating takes a SHARE UPDATE EXCLUSIVE lock (writes go on)."""
    name, title = "not_valid_constraints", "Constraints not validated"
    source = "pg-index-health not_valid_constraints"
    found = await rows(
        conn,
        """
        SELECT format('%I.%I', n.nspname, t.relname) AS "table",
               quote_ident(c.conname) AS "constraint",
               CASE c.contype WHEN 'c' THEN 'check' ELSE 'foreign key' END AS kind,
               pg_get_constraintdef(c.oid) AS definition
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE NOT c.convalidated AND c.contype IN ('c', 'f')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2
        """,
    )
    findings = tuple(
        Finding(
            subject=f"{row['table']}.{row['constraint']}",
            detail=f"{row['kind']} constraint added NOT VALID and never validated:"
            f" {row['definition']}",
            recommendation="validate it; a row that breaks it makes the statement fail and"
            " names the row to fix",
            ddl=f"ALTER TABLE {row['table']} VALIDATE CONSTRAINT {row['constraint']};",
            saves="rows that break the rule going unnoticed, and plans that cannot use it",
            data=row,
        )
        for row in found
    )
    return Check(name, title, source, findings=findings)


async def replication_slots(conn: AsyncConnection, limits: Thresholds) -> Check:
    """An inactive replication slot keeps every WAL segment since its consumer last
    confirmed (physical slots, and logical slots' catalog rows too) until the disk is
    full, unless ``max_slot_wal_keep_size`` bounds it. Slots are the cluster's, so this
    check reads them whichever database the report is on."""
    name, title = "replication_slots", "Inactive replication slots"
    source = "PgHero replication_slots (inactive slots), with the WAL each one holds"
    found = await rows(
        conn,
        """
        SELECT slot_name AS slot, quote_literal(slot_name) AS literal,
               slot_type AS type, database, wal_status,
               pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                    ELSE pg_current_wal_lsn() END,
                               restart_lsn)::bigint AS retained
        FROM pg_replication_slots
        WHERE NOT active
        ORDER BY 1
        """,
    )
    findings = tuple(
        Finding(
            subject=row["slot"],
            detail=f"{row['type']} slot{' of ' + row['database'] if row['database'] else ''}"
            " with no consumer connected, holding "
            + (pretty_bytes(row["retained"]) + " of WAL" if row["retained"] else "no WAL yet")
            + (f" (wal_status {row['wal_status']})" if row["wal_status"] else ""),
            recommendation="drop it if its consumer (a standby, a logical subscriber) is"
            " gone for good; otherwise bring the consumer back",
            ddl=f"SELECT pg_drop_replication_slot({row['literal']});",
            saves=f"{pretty_bytes(row['retained'] or 0)} of WAL on disk, growing with every"
            " write until the disk is full",
            severity="critical" if row["wal_status"] in ("unreserved", "lost") else "warning",
            data=row,
        )
        for row in found
    )
    return Check(name, title, source, findings=findings)


async def replication_lag(conn: AsyncConnection, limits: Thresholds) -> Check:
    """How far replicas are behind. On a primary, each standby streaming from it
    (``pg_stat_replication``): WAL it has not replayed yet, and the replay lag it last
    reported while it has some. On a standby, as PgHero measures it: the time since the last
    replayed commit, counted only while received WAL waits to be replayed (an idle
    primary is not lag), and the bytes waiting."""
    name, title = "replication_lag", "Replication lag"
    source = (
        f"PgHero replication_lag; ours: over {limits.replication_lag_seconds:g} s or"
        f" {pretty_bytes(limits.replication_lag_bytes)} behind"
    )
    standby = (await rows(conn, "SELECT pg_is_in_recovery() AS standby"))[0]["standby"]
    if standby:
        found = await rows(
            conn,
            """
            SELECT 'this standby' AS replica, pg_is_wal_replay_paused() AS paused,
                   CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                        ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
                   END::float8 AS seconds,
                   COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(),
                                            pg_last_wal_replay_lsn()), 0)::bigint AS bytes
            """,
        )
    else:
        found = await rows(
            conn,
            """
            SELECT format('%s (%s)', application_name, COALESCE(host(client_addr), 'local'))
                     AS replica,
                   false AS paused, state,
                   -- The last measured lag stays shown a while after the standby caught up.
                   CASE WHEN replay_lsn = pg_current_wal_lsn() THEN 0
                        ELSE COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)
                   END::float8 AS seconds,
                   COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
                     AS bytes
            FROM pg_stat_replication
            ORDER BY 1
            """,
        )
    findings = tuple(
        Finding(
            subject=row["replica"],
            detail=f"replay {row['seconds']:.1f} s and {pretty_bytes(row['bytes'])} of WAL"
            " behind" + (" (replay is paused)" if row["paused"] else ""),
            recommendation="resume replay: it was paused by hand"
            if row["paused"]
            else "look at the standby's disk and CPU, and at queries there that hold replay"
            " back (max_standby_streaming_delay); reads it serves are that far behind",
            ddl="SELECT pg_wal_replay_resume();" if row["paused"] else None,
            saves="reads from the replica that miss recent writes, and a failover that"
            " would lose or wait for them",
            severity="critical"
            if row["seconds"] > 10 * limits.replication_lag_seconds
            else "warning",
            data=row,
        )
        for row in found
        if row["seconds"] > limits.replication_lag_seconds
        or row["bytes"] > limits.replication_lag_bytes
    )
    return Check(name, title, source, findings=findings)


async def settings(conn: AsyncConnection, limits: Thresholds) -> Check:
    """Server settings that are unsafe, or that the server's own counters show are too
    small for this workload. Settings are the cluster's: the report judges whichever
    server it is on. Each finding's statement sets the value with ALTER SYSTEM and
    reloads (none of these needs a restart)."""
    name, title = "settings", "Server settings"
    source = (
        "PostgreSQL documentation (WAL reliability, routine vacuuming, checkpoints,"
        f" work_mem); ours: {limits.forced_checkpoints} forced checkpoints,"
        f" {pretty_bytes(limits.temp_bytes)} of temporary files"
    )
    found = (
        await rows(
            conn,
            """
            SELECT current_setting('fsync') AS fsync,
                   current_setting('full_page_writes') AS full_page_writes,
                   current_setting('autovacuum') AS autovacuum,
                   current_setting('track_counts') AS track_counts,
                   (SELECT setting::bigint FROM pg_settings WHERE name = 'max_wal_size')
                     AS max_wal_size_mb,
                   (SELECT setting::bigint FROM pg_settings WHERE name = 'work_mem')
                     AS work_mem_kb,
                   b.checkpoints_timed AS timed, b.checkpoints_req AS forced,
                   d.temp_files, d.temp_bytes
            FROM pg_stat_bgwriter b, pg_stat_database d
            WHERE d.datname = current_database()
            """,
        )
    )[0]
    findings = []

    def unsafe(setting: str, detail: str, saves: str) -> None:
        findings.append(
            Finding(
                subject=setting,
                detail=detail,
                recommendation=f"turn {setting} on",
                ddl=f"ALTER SYSTEM SET {setting} = on; SELECT pg_reload_conf();",
                saves=saves,
                severity="critical",
                data={setting: found[setting]},
            )
        )

    if found["fsync"] == "off":
        unsafe(
            "fsync",
            "fsync is off: a crash of the machine can leave the database corrupted",
            "the database after a power loss or kernel crash",
        )
    if found["full_page_writes"] == "off":
        unsafe(
            "full_page_writes",
            "full_page_writes is off: a crash during a page write"
            " can leave a torn page that recovery cannot repair",
            "torn pages after a crash",
        )
    if found["autovacuum"] == "off":
        unsafe(
            "autovacuum",
            "autovacuum is off: dead rows pile up, statistics go stale,"
            " and only manual VACUUM prevents transaction ID wraparound",
            "bloat, stale plans, and a forced shutdown at wraparound",
        )
    if found["track_counts"] == "off":
        unsafe(
            "track_counts",
            "track_counts is off: autovacuum cannot see what changed, and"
            " this report's usage checks read nothing",
            "autovacuum working blind",
        )
    if found["forced"] >= limits.forced_checkpoints and found["forced"] > found["timed"]:
        size = found["max_wal_size_mb"]
        findings.append(
            Finding(
                subject="max_wal_size",
                detail=f"{found['forced']} of {found['forced'] + found['timed']} checkpoints"
                f" were forced by WAL volume: max_wal_size ({size} MB) fills before"
                " checkpoint_timeout",
                recommendation="raise max_wal_size so checkpoints come on time; each forced"
                " one writes every dirty page and makes the next writes log full pages",
                ddl=f"ALTER SYSTEM SET max_wal_size = '{2 * size}MB'; SELECT pg_reload_conf();",
                saves="write bursts and the extra WAL of full-page images after each checkpoint",
                data={key: found[key] for key in ("forced", "timed", "max_wal_size_mb")},
            )
        )
    if found["temp_bytes"] >= limits.temp_bytes and found["work_mem_kb"] <= 4096:
        findings.append(
            Finding(
                subject="work_mem",
                detail=f"queries in this database spilled {pretty_bytes(found['temp_bytes'])}"
                f" to {found['temp_files']} temporary files, with work_mem at its default"
                f" ({found['work_mem_kb'] // 1024} MB)",
                recommendation="raise work_mem for the sessions that sort or hash large sets"
                " (SET work_mem), or for all if memory allows: each sort or hash of each"
                " connection may use that much",
                saves="sorts and hashes on disk instead of in memory",
                severity="info",
                data={key: found[key] for key in ("temp_files", "temp_bytes", "work_mem_kb")},
            )
        )
    return Check(name, title, source, findings=tuple(findings))


_BLOAT_ESTIMATE = """
WITH widths AS (
    SELECT s.schemaname, s.tablename, s.attname, s.avg_width
    FROM pg_stats s
    WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema')
), heaps AS (
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, NULL::text AS "table",
           'table' AS kind, c.reltuples, c.relpages,
           COALESCE(substring(array_to_string(c.reloptions, ' ')
                              FROM 'fillfactor=([0-9]+)')::int, 100) AS fillfactor,
           24 AS page_overhead, 24 AS tuple_header,
           (SELECT sum(w.avg_width) FROM widths w
            WHERE w.schemaname = n.nspname AND w.tablename = c.relname) AS width,
           (SELECT count(*) FROM pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
           (SELECT count(*) FROM widths w
            WHERE w.schemaname = n.nspname AND w.tablename = c.relname) AS measured
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm') AND c.reltuples > 0
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%'
), btrees AS (
    SELECT ic.oid, format('%I.%I', n.nspname, ic.relname) AS name,
           format('%I.%I', n.nspname, tc.relname) AS "table",
           'index' AS kind, ic.reltuples, ic.relpages,
           COALESCE(substring(array_to_string(ic.reloptions, ' ')
                              FROM 'fillfactor=([0-9]+)')::int, 90) AS fillfactor,
           24 + 16 AS page_overhead, 8 AS tuple_header,
           (SELECT sum(w.avg_width) FROM pg_attribute a
            JOIN widths w ON w.schemaname = n.nspname AND w.tablename = tc.relname
                         AND w.attname = a.attname
            WHERE a.attrelid = tc.oid AND a.attnum = ANY (i.indkey::int2[])) AS width,
           i.indnatts AS columns,
           (SELECT count(*) FROM pg_attribute a
            JOIN widths w ON w.schemaname = n.nspname AND w.tablename = tc.relname
                         AND w.attname = a.attname
            WHERE a.attrelid = tc.oid AND a.attnum = ANY (i.indkey::int2[])) AS measured
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_class tc ON tc.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = ic.relnamespace
    JOIN pg_am am ON am.oid = ic.relam
    WHERE am.amname = 'btree' AND i.indisvalid AND ic.reltuples > 0
      AND NOT (0 = ANY (i.indkey::int2[]))
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%'
), sized AS (
    SELECT *, current_setting('block_size')::int AS block,
           -- a tuple: header and data aligned to 8 bytes, plus its 4-byte line pointer
           4 + 8 * ceil((tuple_header + width) / 8.0) AS tuple_bytes
    FROM (SELECT * FROM heaps UNION ALL SELECT * FROM btrees) AS relations
    WHERE measured = columns AND width IS NOT NULL
)
SELECT oid, name, "table", kind, relpages::bigint AS pages, block,
       (relpages::bigint * block) AS size,
       GREATEST(0, relpages - ceil(reltuples / GREATEST(1, floor(
           (block - page_overhead) * fillfactor / 100.0 / tuple_bytes))))::bigint * block
         AS wasted
FROM sized
ORDER BY 1
"""
"""Expected pages from row counts and average column widths (pg_stats) against the
pages a table or btree index has: the method of ioguix's bloat queries, which
postgres_dba (b1, b2) and PgHero's index bloat use, simplified to what decides the
answer (header, alignment, line pointer, fillfactor). It needs ANALYZE to have seen
every column: a relation it has not is left out."""


_UNESTIMATED = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name,
       CASE WHEN c.relkind = 'i' THEN (SELECT format('%I.%I', tn.nspname, t.relname)
                                       FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                                       JOIN pg_namespace tn ON tn.oid = t.relnamespace
                                       WHERE i.indexrelid = c.oid) END AS "table",
       CASE WHEN c.relkind = 'i' THEN 'index' ELSE 'table' END AS kind,
       pg_relation_size(c.oid) AS size
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam
WHERE (c.relkind IN ('r', 'm') OR (c.relkind = 'i' AND am.amname = 'btree'))
  AND NOT (c.oid = ANY (CAST(:judged AS oid[])))
  AND pg_relation_size(c.oid) >= :min_bytes
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1
"""
"""Tables and btree indexes big enough to matter that the estimate left out."""


async def bloat(conn: AsyncConnection, limits: Thresholds) -> Check:
    """Tables and btree indexes whose size is mostly space no row uses: dead rows
    vacuum has not reached, or space freed that a rewrite would give back. Estimated
    from statistics; measured exactly with pgstattuple when the extension is installed
    (only for what the estimate flags, so the report stays cheap on a big database)."""
    name, title = "bloat", "Bloated tables and indexes"
    source = (
        "postgres_dba b1/b2 and PgHero index bloat (estimate from pg_stats);"
        f" ours: at least {pretty_bytes(limits.bloat_min_bytes)} and"
        f" {limits.bloat_share:.0%} of the relation wasted"
    )
    estimated = await rows(conn, _BLOAT_ESTIMATE)
    flagged = [
        row
        for row in estimated
        if row["wasted"] >= limits.bloat_min_bytes
        and row["wasted"] >= limits.bloat_share * row["size"]
    ]
    exact = await has_extension(conn, "pgstattuple")
    if exact:
        # What the estimate cannot judge (never analyzed) is measured when it is big enough.
        judged = [row["oid"] for row in estimated]
        flagged += await rows(conn, _UNESTIMATED, judged=judged, min_bytes=limits.bloat_min_bytes)
    note = None if exact else "estimated from statistics; CREATE EXTENSION pgstattuple measures it"
    findings = []
    for row in flagged:
        measured = "estimated"
        if exact:
            wasted = await _measured_waste(conn, row)
            if isinstance(wasted, str):
                note = wasted
                if "wasted" not in row:
                    continue  # not estimated either
            else:
                measured = "measured with pgstattuple"
                row = {**row, "wasted": wasted}
                if wasted < limits.bloat_min_bytes or wasted < limits.bloat_share * row["size"]:
                    continue
        table = row["name"] if row["kind"] == "table" else row["table"]
        fix = (
            f"VACUUM (FULL, ANALYZE) {table};"
            if row["kind"] == "table"
            else f"REINDEX INDEX CONCURRENTLY {row['name']};"
        )
        findings.append(
            Finding(
                subject=row["name"],
                detail=f"{pretty_bytes(row['wasted'])} of its {pretty_bytes(row['size'])}"
                f" hold no live row ({measured})",
                recommendation="rebuild it to give the space back; VACUUM FULL locks the"
                " table against reads and writes while it runs (pg_repack does not)"
                if row["kind"] == "table"
                else "rebuild it; REINDEX CONCURRENTLY lets reads and writes go on",
                ddl=fix,
                saves=f"{pretty_bytes(row['wasted'])} of disk and cache, and the reads"
                " that scan it",
                data={key: row[key] for key in ("name", "table", "kind", "size", "wasted")}
                | {"measured": measured != "estimated"},
            )
        )
    return Check(name, title, source, note=note, findings=tuple(findings))


async def _measured_waste(conn: AsyncConnection, row: dict[str, Any]) -> int | str:
    """Bytes of ``row``'s relation that hold no live row, by pgstattuple; or why not."""
    if row["kind"] == "table":
        sql = (
            "SELECT (dead_tuple_len + approx_free_space)::bigint AS wasted"
            " FROM pgstattuple_approx(CAST(:oid AS oid)::regclass)"
        )
    else:
        # A btree's leaf pages are filled to its fillfactor (90%) when built.
        sql = (
            "SELECT GREATEST(0, index_size - index_size * avg_leaf_density / 90)::bigint"
            " AS wasted FROM pgstatindex(CAST(:oid AS oid)::regclass)"
        )
    try:
        async with pinned(conn):
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
            found = await rows(conn, sql, oid=row["oid"])
    except DBAPIError as exc:
        return f"pgstattuple could not measure {row['name']} ({sqlstate(exc)}): estimates shown"
    return int(found[0]["wasted"])


async def has_extension(conn: AsyncConnection, name: str) -> bool:
    found = await rows(conn, "SELECT 1 AS yes FROM pg_extension WHERE extname = :name", name=name)
    return bool(found)


async def slow_query_rows(conn: AsyncConnection, limits: Thresholds) -> Rows | str:
    """The slow statements of this database, or why they cannot be read."""
    if not await has_extension(conn, "pg_stat_statements"):
        return (
            "pg_stat_statements is not installed in this database: add it to"
            " shared_preload_libraries and run CREATE EXTENSION pg_stat_statements"
        )
    try:
        return await rows(
            conn,
            """
            SELECT queryid::text AS queryid, query, calls,
                   total_exec_time AS total_ms, mean_exec_time AS mean_ms, rows
            FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND calls >= :calls AND mean_exec_time >= :ms
            ORDER BY total_exec_time DESC
            LIMIT 50
            """,
            calls=limits.slow_query_calls,
            ms=limits.slow_query_ms,
        )
    except DBAPIError as exc:  # created but not preloaded: the view raises
        return f"pg_stat_statements cannot be read: {str(exc.orig).splitlines()[0]}"


async def slow_queries(conn: AsyncConnection, limits: Thresholds) -> Check:
    source = (
        f"PgHero slow_queries (pg_stat_statements: at least {limits.slow_query_calls} calls"
        f" averaging {limits.slow_query_ms:g} ms)"
    )
    found = await slow_query_rows(conn, limits)
    if isinstance(found, str):
        return Check("slow_queries", "Slow queries", source, ran=False, note=found)
    findings = tuple(
        Finding(
            subject=f"query {row['queryid']}",
            detail=f"{row['calls']} calls averaging {row['mean_ms']:.1f} ms"
            f" ({row['total_ms'] / 1000:.1f} s in all): {row['query'][:300]}",
            recommendation="EXPLAIN (ANALYZE, BUFFERS) it; the suggested_indexes check"
            " tries indexes for it when hypopg is installed",
            saves=f"up to {row['total_ms'] / 1000:.1f} s of database time per such period",
            data=row,
        )
        for row in found
    )
    return Check("slow_queries", "Slow queries", source, findings=findings)


CHECKS: Sequence[CheckFn] = (
    unused_indexes,
    duplicate_indexes,
    invalid_indexes,
    missing_indexes,
    vacuum_and_analyze,
    transaction_ids,
    cache_hit_ratio,
    connections,
    long_running_queries,
    blocked_queries,
    sequences,
    unindexed_foreign_keys,
    not_valid_constraints,
    replication_slots,
    replication_lag,
    bloat,
    settings,
    slow_queries,
)
"""Every PostgreSQL check, in the order a report lists them."""


async def overview(conn: AsyncConnection) -> dict[str, Any]:
    """Figures a person reads beside the findings."""
    ratios = await rows(
        conn,
        """
        SELECT (SELECT sum(heap_blks_hit) / NULLIF(sum(heap_blks_hit + heap_blks_read), 0)
                FROM pg_statio_user_tables)::float8 AS heap,
               (SELECT sum(idx_blks_hit) / NULLIF(sum(idx_blks_hit + idx_blks_read), 0)
                FROM pg_statio_user_indexes)::float8 AS index,
               pg_database_size(current_database()) AS size
        """,
    )
    states = await rows(
        conn,
        """
        SELECT COALESCE(state, 'background') AS state, count(*) AS n
        FROM pg_stat_activity GROUP BY 1 ORDER BY 1
        """,
    )
    tables = await rows(
        conn,
        """
        SELECT format('%I.%I', schemaname, relname) AS "table", n_live_tup AS live,
               n_dead_tup AS dead, last_vacuum, last_autovacuum, last_analyze,
               last_autoanalyze
        FROM pg_stat_user_tables ORDER BY 1
        """,
    )
    return {
        "database_size": pretty_bytes(ratios[0]["size"]),
        "heap_cache_hit_ratio": ratios[0]["heap"],
        "index_cache_hit_ratio": ratios[0]["index"],
        "connections_by_state": {row["state"]: row["n"] for row in states},
        "pg_stat_statements": await has_extension(conn, "pg_stat_statements"),
        "hypopg": await has_extension(conn, "hypopg"),
        "tables": tables,
    }
