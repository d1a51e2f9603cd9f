"""Index suggestions for the whole slow workload, tested with hypothetical indexes (hypopg).

As Dexter (ankane/dexter) does, each slow statement from pg_stat_statements is planned
generically (``PREPARE`` + ``plan_cache_mode = force_generic_plan``, since the
statements hold ``$1`` placeholders) and its plan names the candidates: the columns its
scans filter on, the columns its joins match on, and the columns it sorts by, alone
and in pairs; where a scan filters on ``col IS NULL`` or ``col IS NOT NULL``, the same
candidates as partial indexes under that predicate; where it compares ``lower(col)`` or
``upper(col)``, an index on that expression. A candidate that an existing index already
starts with is never proposed.

Unlike Dexter, the choice is made for the workload, not one statement at a time. Each
candidate is created *hypothetically* (only this session's planner sees it, nothing is
built) and every slow statement on its table is planned again. Both sides are weighed
in database time, from pg_stat_statements, so they cover the same period:

* what it saves: for each statement, its total execution time times the share of its
  plan's cost the index takes off (time taken as proportional to cost, as Dexter does);
* what it costs: the time it would add to the workload's writes to the table (its
  INSERT, UPDATE, COPY and MERGE statements), by :mod:`service.db.write_cost`: a part
  of each row written, and for an index on a column the workload updates, the
  heap-only (HOT) updates it would end.

The candidate with the largest saving net of that cost is kept (it must also halve the
cost of at least one statement: Dexter's ``--min-cost-savings-pct 50``), stays in
place while the next is chosen, and so on: two statements served by one index get one
suggestion, and an index that a chosen one makes redundant gets none.

Nothing here writes to the database: hypothetical indexes vanish with
``hypopg_reset()``, and the statements are only planned, never executed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.diagnostics import (
    Thresholds,
    has_extension,
    pinned,
    rows,
    slow_query_rows,
)
from service.db.report import Check, Finding
from service.db.write_cost import (
    ORDERED_CORRELATION,
    Shape,
    TableWrites,
    added_cost,
    table_writes,
)

logger = logging.getLogger(__name__)

MIN_SAVINGS = 0.5
"""Dexter's default: an index must halve the plan cost of at least one statement."""
MAX_QUERIES = 20
MAX_CANDIDATES = 60
"""Candidates tried per report, the most often proposed first."""
MAX_INDEXES = 5
"""Indexes suggested per report: the workload is planned again after each."""
TIE = 0.05
"""Net savings this close to the best count as the same (see :func:`_choose`)."""
_PLACEHOLDER = re.compile(r"\$(\d+)")
_STATEMENT = "svc_advisor_statement"
_SCANS = frozenset({"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan"})
_JOIN_CONDITIONS = ("Hash Cond", "Merge Cond", "Join Filter")
_FOLDS = ("lower", "upper")
"""Functions of one column whose comparisons get an expression index candidate."""
_READ = re.compile(r"(?is)^\s*(select|with)\b")


@dataclass(frozen=True, slots=True)
class Candidate:
    relation: tuple[str, str]
    """(schema, name) as the catalog spells them."""
    table: str
    """Schema-qualified and quoted, as ``format('%I.%I')`` gives it."""
    columns: tuple[str, ...]
    """Quoted column names, in index order."""
    predicate: str | None = None
    """A partial index's ``WHERE`` (``"col" IS NULL``), built from quoted names only."""
    share: float = 1.0
    """The share of the table's rows it holds (``pg_stats.null_frac`` for a predicate)."""
    attributes: frozenset[str] = frozenset()
    """The names of the columns it reads, its predicate's included, as the catalog
    spells them: an update that sets one of them cannot be heap-only."""
    ordered: bool = False
    """Whether the rows' physical order follows its leading column (see
    :class:`~service.db.write_cost.Shape`)."""

    @property
    def shape(self) -> Shape:
        return Shape(self.attributes, self.ordered, self.share)

    @property
    def definition(self) -> str:
        where = f" WHERE {self.predicate}" if self.predicate else ""
        return f"ON {self.table} ({', '.join(self.columns)}){where}"

    @property
    def ddl(self) -> str:
        return f"CREATE INDEX CONCURRENTLY {self.definition};"


@dataclass(slots=True)
class _Statement:
    name: str
    """Its prepared statement's name."""
    row: dict[str, Any]
    """Its pg_stat_statements row."""
    arguments: str
    relations: frozenset[tuple[str, str]] = frozenset()
    """What its plan scans, (schema, name)."""
    cost: float = 0.0
    """The plan's cost with the indexes chosen so far."""
    base: float = 0.0
    """The plan's cost with none: what its execution time was spent on."""


@dataclass(slots=True)
class Suggestion:
    candidate: Candidate
    costs: dict[str, tuple[float, float]] = field(default_factory=dict)
    """queryid → (cost before, cost with this index), for each statement it speeds up."""
    saving: float = 0.0
    """Milliseconds of the statements' execution time it takes off."""
    write_cost: float = 0.0
    """Milliseconds it would add to the writes to its table."""
    writes: int = 0
    """Rows the workload wrote to its table."""
    hot_lost: int = 0
    """Rows the workload updated heap-only (HOT) that would write every index with it."""
    size: int = 0
    """Bytes, as hypopg estimates them."""

    @property
    def net(self) -> float:
        return self.saving - self.write_cost


async def suggested_indexes(conn: AsyncConnection, limits: Thresholds) -> Check:
    name, title = "suggested_indexes", "Suggested indexes"
    source = (
        "hypopg hypothetical indexes over the slow workload (Dexter's method, weighed"
        " against the time it adds to the workload's writes)"
    )
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
    reads = [row for row in slow[:MAX_QUERIES] if _READ.match(row["query"])]
    try:
        suggestions, scanned = await advise(conn, reads) if reads else ([], frozenset())
    except DBAPIError as exc:
        reason = str(exc.orig).splitlines()[0]
        return Check(name, title, source, ran=False, note=f"cannot plan the workload: {reason}")
    queries = {row["queryid"]: row for row in reads}
    unanalyzed = await _without_statistics(conn, scanned)
    note = (
        f"no planner statistics for {', '.join(unanalyzed)} (never analyzed): the plans,"
        " and so what is suggested for them, may change once ANALYZE has run"
        if unanalyzed
        else None
    )
    findings = tuple(_finding(s, queries) for s in suggestions)
    return Check(name, title, source, note=note, findings=findings)


async def _without_statistics(
    conn: AsyncConnection, relations: frozenset[tuple[str, str]]
) -> list[str]:
    """The tables of ``relations`` that have no column statistics (``pg_stats``)."""
    if not relations:
        return []
    found = await rows(
        conn,
        """
        SELECT format('%I.%I', n.nspname, c.relname) AS "table"
        FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS r(schema, name)
        JOIN pg_namespace n ON n.nspname = r.schema
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = r.name
        WHERE c.relkind IN ('r', 'p', 'm')
          AND NOT EXISTS (
            SELECT 1 FROM pg_stats s WHERE s.schemaname = n.nspname AND s.tablename = c.relname
          )
        ORDER BY 1
        """,
        schemas=[schema for schema, _ in sorted(relations)],
        names=[name for _, name in sorted(relations)],
    )
    return [row["table"] for row in found]


def _finding(suggestion: Suggestion, queries: dict[str, dict[str, Any]]) -> Finding:
    candidate = suggestion.candidate
    gains = sorted(
        suggestion.costs.items(),
        key=lambda item: queries[item[0]]["calls"] * (item[1][0] - item[1][1]),
        reverse=True,
    )
    top, (before, after) = gains[0]
    described = "; ".join(
        f"query {queryid} ({queries[queryid]['calls']} calls) {b:.0f} -> {a:.0f}"
        for queryid, (b, a) in gains
    )
    where = f" WHERE {candidate.predicate}" if candidate.predicate else ""
    return Finding(
        subject=f"{candidate.table} ({', '.join(candidate.columns)}){where}",
        detail=f"plan costs with this index: {described}; the first: {queries[top]['query'][:300]}",
        recommendation="create the index, then check the statements' timing in pg_stat_statements",
        ddl=candidate.ddl,
        saves=f"about {suggestion.saving / 1000:,.1f} s of the statements' execution time,"
        f" against {suggestion.write_cost / 1000:,.1f} s it would add to the"
        f" {suggestion.writes:,} rows the workload wrote to the table{_hot_lost(suggestion)}"
        " (pg_stat_statements, since its last reset)",
        data={
            "queryid": top,
            "queryids": [queryid for queryid, _ in gains],
            "table": candidate.table,
            "columns": list(candidate.columns),
            "predicate": candidate.predicate,
            "cost_before": before,
            "cost_after": after,
            "statements": [
                {"queryid": queryid, "cost_before": b, "cost_after": a} for queryid, (b, a) in gains
            ],
            "saving_ms": suggestion.saving,
            "write_ms": suggestion.write_cost,
            "rows_written": suggestion.writes,
            "hot_updates_lost": suggestion.hot_lost,
        },
    )


def _hot_lost(suggestion: Suggestion) -> str:
    if not suggestion.hot_lost:
        return ""
    return (
        f", {suggestion.hot_lost:,} of them heap-only (HOT) updates that would then write"
        " every index"
    )


async def advise(
    conn: AsyncConnection, reads: Sequence[dict[str, Any]]
) -> tuple[list[Suggestion], frozenset[tuple[str, str]]]:
    """The indexes worth building for ``reads`` (pg_stat_statements rows), best first,
    and the tables the reads' plans scan, (schema, name)."""
    writes = await table_writes(conn)
    # One transaction: the prepared statements, the plan setting and the hypothetical
    # indexes are the session's, and behind PgBouncer only a transaction keeps one.
    async with pinned(conn):
        await conn.execute(text("SELECT hypopg_reset()"))
        await conn.exec_driver_sql("SAVEPOINT advisor")
        statements: list[_Statement] = []
        try:
            for number, row in enumerate(reads):
                statement = await _prepared(conn, f"{_STATEMENT}_{number}", row)
                if statement is not None:
                    statements.append(statement)
            await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            chosen = await _choose(conn, statements, writes)
            scanned = frozenset().union(*(s.relations for s in statements))
            return chosen, scanned
        except BaseException:
            # Prepared statements outlive a rollback: bring the transaction back so
            # that they can be deallocated.
            await conn.exec_driver_sql("ROLLBACK TO SAVEPOINT advisor")
            raise
        finally:
            for statement in statements:
                await conn.exec_driver_sql(f"DEALLOCATE {statement.name}")
            await conn.execute(text("SELECT hypopg_reset()"))


async def _prepared(conn: AsyncConnection, name: str, row: dict[str, Any]) -> _Statement | None:
    """``row``'s statement prepared as ``name``; None if it cannot be (a placeholder
    whose type the statement does not tell, a table gone since)."""
    query = row["query"].strip().rstrip(";")
    placeholders = max((int(n) for n in _PLACEHOLDER.findall(query)), default=0)
    await conn.exec_driver_sql("SAVEPOINT advisor_prepare")
    try:
        await conn.exec_driver_sql(f"PREPARE {name} AS {query}")
    except DBAPIError as exc:
        await conn.exec_driver_sql("ROLLBACK TO SAVEPOINT advisor_prepare")
        logger.debug("cannot plan a slow query: %s", str(exc.orig).splitlines()[0])
        return None
    await conn.exec_driver_sql("RELEASE SAVEPOINT advisor_prepare")
    arguments = f"({', '.join(['NULL'] * placeholders)})" if placeholders else ""
    return _Statement(name, row, arguments)


async def _choose(
    conn: AsyncConnection,
    statements: list[_Statement],
    writes: dict[str, TableWrites],
) -> list[Suggestion]:
    """The greedy choice described in the module docstring."""
    proposed: dict[Candidate, int] = {}
    for statement in statements:
        statement.cost, plan = await _plan(conn, statement)
        statement.base = statement.cost
        statement.relations = frozenset(_scanned(plan))
        for candidate in await _candidates(conn, plan):
            proposed[candidate] = proposed.get(candidate, 0) + 1
    existing = await _existing_indexes(conn, {c.table for c in proposed})
    candidates = [
        candidate
        for candidate, _ in sorted(proposed.items(), key=lambda item: -item[1])
        if not any(_covers(index, candidate) for index in existing.get(candidate.table, ()))
    ][:MAX_CANDIDATES]
    chosen: list[Suggestion] = []
    while candidates and len(chosen) < MAX_INDEXES:
        tried = []
        for candidate in candidates:
            suggestion = await _try(conn, candidate, statements)
            table = candidate.table
            written = writes.get(table, TableWrites())
            cost = added_cost(
                written,
                candidate.shape,
                [index.shape for index in existing.get(table, [])],
                [s.candidate.shape for s in chosen if s.candidate.table == table],
            )
            suggestion.writes, suggestion.write_cost = written.rows, cost.ms
            suggestion.hot_lost = cost.hot_lost
            if suggestion.net > 0:
                tried.append(suggestion)
        # A saving only shrinks as indexes are added, so what nets nothing now never will.
        worth = [s for s in tried if _halves(s)]
        if not worth:
            break
        # Savings within TIE of the best are a tie: the smallest index wins (less disk,
        # cache and write work; a partial index over the rows the statements read).
        most = max(s.net for s in worth)
        best = min((s for s in worth if s.net >= most * (1 - TIE)), key=lambda s: s.size)
        await conn.execute(
            text("SELECT * FROM hypopg_create_index(:ddl)"),
            {"ddl": f"CREATE INDEX {best.candidate.definition}"},
        )
        for statement in statements:
            if statement.row["queryid"] in best.costs:
                statement.cost = best.costs[statement.row["queryid"]][1]
        chosen.append(best)
        candidates = [s.candidate for s in tried if s is not best]
    return chosen


async def _try(
    conn: AsyncConnection, candidate: Candidate, statements: list[_Statement]
) -> Suggestion:
    """What ``candidate`` saves each statement on its table, created hypothetically."""
    suggestion = Suggestion(candidate)
    created = await conn.execute(
        text("SELECT indexrelid FROM hypopg_create_index(:ddl)"),
        {"ddl": f"CREATE INDEX {candidate.definition}"},
    )
    index = created.scalar_one()
    try:
        size = await conn.execute(text("SELECT hypopg_relation_size(:oid)"), {"oid": index})
        suggestion.size = int(size.scalar_one())
        for statement in statements:
            if candidate.relation not in statement.relations:
                continue
            after, _ = await _plan(conn, statement)
            if after < statement.cost:
                queryid = statement.row["queryid"]
                suggestion.costs[queryid] = (statement.cost, after)
                share = (statement.cost - after) / statement.base if statement.base else 0.0
                suggestion.saving += float(statement.row["total_ms"]) * share
    finally:
        await conn.execute(text("SELECT hypopg_drop_index(:oid)"), {"oid": index})
    return suggestion


def _halves(suggestion: Suggestion) -> bool:
    return any(after <= before * (1 - MIN_SAVINGS) for before, after in suggestion.costs.values())


async def _plan(conn: AsyncConnection, statement: _Statement) -> tuple[float, dict[str, Any]]:
    """The statement's generic plan now, and its total cost."""
    # Plan afresh: a cached generic plan would not see a hypothetical index (hypopg
    # sends no invalidation), so every cost with one would equal the cost without.
    await conn.exec_driver_sql("DISCARD PLANS")
    explain = f"EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {statement.name}{statement.arguments}"
    raw = (await conn.exec_driver_sql(explain)).scalar_one()
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return float(plan["Total Cost"]), plan


@dataclass(frozen=True, slots=True)
class _Index:
    columns: tuple[str, ...]
    """Its key columns as ``pg_get_indexdef`` writes them: a quoted name, or an
    expression (``lower(email)``)."""
    predicate: str | None
    btree: bool = True
    attributes: frozenset[str] = frozenset()
    """The names of the columns it reads, its expressions' and predicate's included."""
    ordered: bool = False

    @property
    def shape(self) -> Shape:
        return Shape(self.attributes, self.ordered)


async def _existing_indexes(conn: AsyncConnection, tables: set[str]) -> dict[str, list[_Index]]:
    """The valid indexes of each table: of any method, each takes its part of a write;
    only a btree one can make a candidate a duplicate."""
    if not tables:
        return {}
    found = await rows(
        conn,
        """
        SELECT format('%I.%I', n.nspname, t.relname) AS "table",
               array(
                 SELECT pg_get_indexdef(i.indexrelid, k, true)
                 FROM generate_series(1, i.indnkeyatts) AS k
                 ORDER BY k
               ) AS columns,
               pg_get_expr(i.indpred, i.indrelid) AS predicate,
               am.amname = 'btree' AS btree,
               -- Key and INCLUDE columns are in indkey; the columns of expressions
               -- and predicates only in the index's dependencies.
               array(
                 SELECT a.attname FROM pg_attribute a
                 WHERE a.attrelid = i.indrelid AND a.attnum > 0
                   AND (a.attnum = ANY(i.indkey) OR EXISTS (
                     SELECT 1 FROM pg_depend d
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                       AND d.refclassid = 'pg_class'::regclass
                       AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
               ) AS attributes,
               coalesce((
                 SELECT abs(s.correlation) >= :ordered FROM pg_attribute a
                 JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = t.relname
                  AND s.attname = a.attname AND NOT s.inherited
                 WHERE a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               ), false) AS ordered
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indisvalid
          AND format('%I.%I', n.nspname, t.relname) = ANY(CAST(:tables AS text[]))
        """,
        tables=sorted(tables),
        ordered=ORDERED_CORRELATION,
    )
    existing: dict[str, list[_Index]] = {}
    for row in found:
        existing.setdefault(row["table"], []).append(
            _Index(
                tuple(row["columns"]),
                row["predicate"],
                row["btree"],
                frozenset(row["attributes"]),
                row["ordered"],
            )
        )
    return existing


def _covers(index: _Index, candidate: Candidate) -> bool:
    """Whether ``index`` starts with ``candidate``'s columns and covers its rows (no
    predicate, or the same one): then the candidate is a duplicate of what exists."""
    if not index.btree:
        return False
    same_rows = index.predicate is None or (
        candidate.predicate is not None and _bare(index.predicate) == _bare(candidate.predicate)
    )
    keys = tuple(_unwrapped(column) for column in candidate.columns)
    return same_rows and index.columns[: len(keys)] == keys


def _unwrapped(element: str) -> str:
    """An index element as ``pg_get_indexdef`` writes it: an expression without the
    parentheses CREATE INDEX needs around it."""
    return element[1:-1] if element.startswith("(") and element.endswith(")") else element


def _bare(expression: str) -> str:
    return expression.replace("(", "").replace(")", "").strip()


def _scanned(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for node in _nodes(plan):
        relation = node.get("Relation Name")
        if relation:
            yield node.get("Schema", "public"), relation


async def _candidates(conn: AsyncConnection, plan: dict[str, Any]) -> list[Candidate]:
    """What ``plan`` suggests trying, per table (see the module docstring). Any scan that
    filters rows after reading them counts: a sequential scan, and as much an index
    scan on another column whose rows are then filtered (an ORDER BY ... LIMIT walked
    along the wrong index reads the table all the same)."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for node in _nodes(plan):
        relation = node.get("Relation Name")
        if relation and node.get("Node Type") in _SCANS and node.get("Filter"):
            key = (node.get("Schema", "public"), relation)
            wanted.setdefault(key, set()).add(node["Filter"])
        conditions = [node[name] for name in _JOIN_CONDITIONS if node.get(name)]
        if conditions:
            # The rows a join matches on: each table scanned in full beneath it.
            for below in _nodes(node):
                if below.get("Node Type") == "Seq Scan" and below.get("Relation Name"):
                    key = (below.get("Schema", "public"), below["Relation Name"])
                    wanted.setdefault(key, set()).update(conditions)
    sort_keys = [key for node in _nodes(plan) for key in node.get("Sort Key", [])]
    candidates: list[Candidate] = []
    for (schema, relation), filters in wanted.items():
        columns = await rows(
            conn,
            """
            SELECT quote_ident(a.attname) AS quoted, a.attname AS name,
                   format('%I.%I', n.nspname, c.relname) AS "table",
                   coalesce(s.null_frac, 0)::float AS null_share,
                   coalesce(abs(s.correlation), 0)::float AS correlation
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_stats s
              ON s.schemaname = n.nspname AND s.tablename = c.relname
             AND s.attname = a.attname AND NOT s.inherited
            WHERE n.nspname = :schema AND c.relname = :relation
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            schema=schema,
            relation=relation,
        )
        if not columns:
            continue
        table = ((schema, relation), columns[0]["table"])
        names = [column["quoted"] for column in columns]
        filtered = _mentioned(names, sorted(filters))
        ordered = [c for c in _mentioned(names, sort_keys) if c not in filtered]
        found = _shapes(table, filtered, ordered)
        folded = _folded(names, sorted(filters))
        found += _shapes(table, folded, ordered) if folded else []
        nulls = {column["quoted"]: column["null_share"] for column in columns}
        for predicate, column in _null_tests(names, sorted(filters)):
            others = [c for c in filtered if c != column]
            share = nulls[column] if predicate.endswith(" IS NULL") else 1 - nulls[column]
            if others or ordered:
                found += _shapes(table, others, ordered, predicate, share)
        names_of = {column["quoted"]: column["name"] for column in columns}
        in_order = {c["quoted"] for c in columns if c["correlation"] >= ORDERED_CORRELATION}
        candidates += [_described(candidate, names_of, in_order) for candidate in found]
    return list(dict.fromkeys(candidates))


def _described(candidate: Candidate, names_of: dict[str, str], in_order: set[str]) -> Candidate:
    """``candidate`` with the names of the columns its elements and predicate read
    (``names_of``: the table's quoted names to the catalog's), and whether it leads
    with one of the columns the rows' physical order follows (``in_order``)."""
    elements = [*candidate.columns, candidate.predicate or ""]
    read = frozenset(names_of[quoted] for quoted in _mentioned(list(names_of), elements))
    leads = candidate.columns[0] in in_order
    return dataclasses.replace(candidate, attributes=read, ordered=leads)


def _shapes(
    table: tuple[tuple[str, str], str],
    filtered: list[str],
    ordered: list[str],
    predicate: str | None = None,
    share: float = 1.0,
) -> list[Candidate]:
    """Single filtered columns, ordered pairs of them, and (filter, sort) pairs; with
    nothing filtered, the sort columns alone."""
    shapes: list[tuple[str, ...]] = [(column,) for column in filtered]
    shapes += list(itertools.permutations(filtered, 2))
    shapes += list(itertools.product(filtered, ordered))
    if not filtered:
        shapes += [(column,) for column in ordered]
    relation, quoted = table
    return [Candidate(relation, quoted, tuple(shape), predicate, share) for shape in shapes]


def _mentioned(columns: list[str], expressions: list[str]) -> list[str]:
    return [
        column
        for column in columns
        if any(
            re.search(rf'(?<![\w"]){re.escape(column)}(?![\w"])', expression)
            for expression in expressions
        )
    ]


def _folded(columns: list[str], expressions: list[str]) -> list[str]:
    """Expression index elements, ``(lower(col))``, for each ``lower(col)`` or
    ``upper(col)`` the filters compare: the case-insensitive lookup a plain index on the
    column cannot serve. Rebuilt from the quoted name (nothing of the plan's text is
    reused)."""
    found = []
    for column in columns:
        for function in _FOLDS:
            pattern = rf'(?<![\w"]){function}\((?:[\w"]+\.)?{re.escape(column)}\)'
            if any(re.search(pattern, expression) for expression in expressions):
                found.append(f"({function}({column}))")
    return found


def _null_tests(columns: list[str], expressions: list[str]) -> list[tuple[str, str]]:
    """``(predicate, column)`` for each ``column IS [NOT] NULL`` the filters hold, the
    predicate rebuilt from the quoted name (nothing of the plan's text is reused)."""
    found = []
    for column in columns:
        for test in ("IS NOT NULL", "IS NULL"):
            pattern = rf'(?<![\w"]){re.escape(column)} {test}\)'
            if any(re.search(pattern, expression) for expression in expressions):
                found.append((f"{column} {test}", column))
    return found


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def without_covered_foreign_keys(foreign_keys: Check, suggested: Check) -> Check:
    """``foreign_keys`` without the findings a suggested index covers (its first columns
    are the key's, over all rows): one index, not two, serves the key and the slow
    statements."""
    covers = [
        (finding.data["table"], tuple(finding.data["columns"]))
        for finding in suggested.findings
        if finding.data.get("predicate") is None
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
