"""Index suggestions for slow queries, tested with hypothetical indexes (hypopg).

As Dexter (ankane/dexter) does: take each slow statement from pg_stat_statements, get
its generic plan (``PREPARE`` + ``plan_cache_mode = force_generic_plan``, since the
statements hold ``$1`` placeholders), collect the columns its sequential scans filter
on and its sorts order by, create each candidate index *hypothetically* (hypopg: only
this session's planner sees it, nothing is built) and keep the cheapest one if it cuts
the plan's cost by at least half (Dexter's ``--min-cost-savings-pct 50``).

Nothing here writes to the database: hypothetical indexes vanish with
``hypopg_reset()``, and the statement is only planned, never executed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.diagnostics import (
    Rows,
    Thresholds,
    has_extension,
    pinned,
    rows,
    slow_query_rows,
)
from service.db.report import Check, Finding

logger = logging.getLogger(__name__)

MIN_SAVINGS = 0.5
"""Dexter's default: suggest an index only if it halves the plan's cost."""
MAX_QUERIES = 20
_PLACEHOLDER = re.compile(r"\$(\d+)")
_STATEMENT = "svc_advisor_statement"
_SCANS = frozenset({"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan"})


@dataclass(frozen=True, slots=True)
class Suggestion:
    table: str
    columns: tuple[str, ...]
    """Quoted column names, in index order."""
    cost_before: float
    cost_after: float

    @property
    def ddl(self) -> str:
        return f"CREATE INDEX CONCURRENTLY ON {self.table} ({', '.join(self.columns)});"


async def suggested_indexes(conn: AsyncConnection, limits: Thresholds) -> Check:
    name, title = "suggested_indexes", "Suggested indexes"
    source = "Dexter's method: hypopg hypothetical indexes, kept when they halve the plan cost"
    if not await has_extension(conn, "hypopg"):
        return Check(
            name,
            title,
            source,
            ran=False,
            note="hypopg is not installed in this database (Debian: postgresql-15-hypopg,"
            " then CREATE EXTENSION hypopg)",
        )
    slow = await slow_query_rows(conn, limits)
    if isinstance(slow, str):
        return Check(name, title, source, ran=False, note=slow)
    findings = []
    for row in slow[:MAX_QUERIES]:
        suggestion = await suggest(conn, row["query"])
        if suggestion is None:
            continue
        saved = 1 - suggestion.cost_after / suggestion.cost_before
        findings.append(
            Finding(
                subject=f"query {row['queryid']}",
                detail=f"with this index the plan costs {suggestion.cost_after:.0f} instead of"
                f" {suggestion.cost_before:.0f}: {row['query'][:300]}",
                recommendation=f"create the index on {suggestion.table}, then check the"
                " query's timing in pg_stat_statements",
                ddl=suggestion.ddl,
                saves=f"{saved:.0%} of the plan's estimated cost, on {row['calls']} calls",
                data={
                    "queryid": row["queryid"],
                    "table": suggestion.table,
                    "columns": list(suggestion.columns),
                    "cost_before": suggestion.cost_before,
                    "cost_after": suggestion.cost_after,
                },
            )
        )
    return Check(name, title, source, findings=tuple(findings))


async def suggest(conn: AsyncConnection, query: str) -> Suggestion | None:
    """The hypothetical index that cuts ``query``'s cost most, if it cuts it by half."""
    stripped = query.strip().rstrip(";")
    if not re.match(r"(?is)^\s*(select|with)\b", stripped):
        return None  # only reads: their plans are what indexes change, safely
    placeholders = max((int(n) for n in _PLACEHOLDER.findall(stripped)), default=0)
    try:
        # One transaction: the prepared statement, the plan setting and the hypothetical
        # indexes are the session's, and behind PgBouncer only a transaction keeps one.
        async with pinned(conn):
            return await _best_index(conn, stripped, placeholders)
    except DBAPIError as exc:
        logger.debug("cannot plan a slow query: %s", str(exc.orig).splitlines()[0])
        return None


async def _best_index(conn: AsyncConnection, query: str, placeholders: int) -> Suggestion | None:
    """:func:`suggest`'s work, inside its transaction. A prepared statement outlives a
    rollback, so it is deallocated whatever happens; the hypothetical indexes go with
    ``hypopg_reset()`` (they too are the session's, not the transaction's)."""
    await conn.execute(text("SELECT hypopg_reset()"))
    await conn.exec_driver_sql(f"PREPARE {_STATEMENT} AS {query}")
    await conn.exec_driver_sql("SAVEPOINT planning")
    try:
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        args = f"({', '.join(['NULL'] * placeholders)})" if placeholders else ""
        explain = f"EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {_STATEMENT}{args}"  # names schemas

        async def cost() -> tuple[float, dict[str, Any]]:
            # Plan afresh: the cached generic plan would not see a hypothetical index
            # (hypopg sends no invalidation), so every "after" cost would equal "before".
            await conn.exec_driver_sql("DISCARD PLANS")
            raw = (await conn.exec_driver_sql(explain)).scalar_one()
            plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
            return float(plan["Total Cost"]), plan

        before, plan = await cost()
        best: Suggestion | None = None
        for table, columns in await _candidates(conn, plan):
            await conn.execute(
                text("SELECT * FROM hypopg_create_index(:ddl)"),
                {"ddl": f"CREATE INDEX ON {table} ({', '.join(columns)})"},
            )
            after, _ = await cost()
            await conn.execute(text("SELECT hypopg_reset()"))
            if best is None or after < best.cost_after:
                best = Suggestion(table, columns, before, after)
        await conn.exec_driver_sql("RELEASE SAVEPOINT planning")
    except BaseException:
        await conn.exec_driver_sql("ROLLBACK TO SAVEPOINT planning")
        raise
    finally:
        await conn.exec_driver_sql(f"DEALLOCATE {_STATEMENT}")
        await conn.execute(text("SELECT hypopg_reset()"))
    if best is not None and best.cost_after <= before * (1 - MIN_SAVINGS):
        return best
    return None


async def _candidates(
    conn: AsyncConnection, plan: dict[str, Any]
) -> list[tuple[str, tuple[str, ...]]]:
    """Single columns its scans filter on, and (filter, sort) pairs, per table. Any scan
    that filters rows after reading them counts: a sequential scan, and as much an index
    scan on another column whose rows are then filtered (an ORDER BY ... LIMIT walked
    along the wrong index reads the table all the same)."""
    wanted: dict[str, tuple[set[str], set[str]]] = {}
    for node in _nodes(plan):
        relation = node.get("Relation Name")
        if relation and node.get("Node Type") in _SCANS and node.get("Filter"):
            schema = node.get("Schema", "public")
            wanted.setdefault(f"{schema}\x00{relation}", (set(), set()))[0].add(node["Filter"])
    sort_keys = [key for node in _nodes(plan) for key in node.get("Sort Key", [])]
    candidates: list[tuple[str, tuple[str, ...]]] = []
    for key, (filters, _) in wanted.items():
        schema, relation = key.split("\x00")
        columns = await rows(
            conn,
            """
            SELECT a.attname AS name, quote_ident(a.attname) AS quoted,
                   format('%I.%I', n.nspname, c.relname) AS "table"
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = :schema AND c.relname = :relation
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            schema=schema,
            relation=relation,
        )
        if not columns:
            continue
        table = columns[0]["table"]

        def mentioned(expressions: list[str], columns: Rows = columns) -> list[str]:
            return [
                column["quoted"]
                for column in columns
                if any(
                    re.search(rf'(?<![\w"]){re.escape(column["quoted"])}(?![\w"])', expr)
                    for expr in expressions
                )
            ]

        filtered = mentioned(sorted(filters))
        ordered = [c for c in mentioned(sort_keys) if c not in filtered]
        candidates += [(table, (column,)) for column in filtered]
        candidates += [(table, pair) for pair in itertools.permutations(filtered, 2)]
        candidates += [(table, (f, o)) for f, o in itertools.product(filtered, ordered)]
    return candidates[:30]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def without_covered_foreign_keys(foreign_keys: Check, suggested: Check) -> Check:
    """``foreign_keys`` without the findings a suggested index covers (its first columns
    are the key's): one index, not two, serves the key and the slow statement."""
    covers = [
        (finding.data["table"], tuple(finding.data["columns"])) for finding in suggested.findings
    ]
    kept = tuple(
        finding
        for finding in foreign_keys.findings
        if not any(
            table == finding.data["table"]
            and set(columns[: len(finding.data["columns"])]) == set(finding.data["columns"])
            for table, columns in covers
        )
    )
    if len(kept) == len(foreign_keys.findings):
        return foreign_keys
    note = f"{len(foreign_keys.findings) - len(kept)} covered by a suggested index"
    return dataclasses.replace(foreign_keys, findings=kept, note=note)
