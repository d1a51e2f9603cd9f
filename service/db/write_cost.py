"""What one more index would add to the time the workload spends writing its table.

The workload's writes are pg_stat_statements' INSERT, UPDATE, COPY and MERGE
statements, by target table: their calls, rows and execution time, the same period
the advisor's reads cover. Each statement's time is taken in parts: its own work
(:data:`STATEMENT_PARTS` a call), then for each row written one part for the heap and
one for each index. One more index adds a part to each row (a partial index only to
the rows it holds).

An UPDATE can be heap-only (HOT): when no column of any index changes and the new
version fits on its page, PostgreSQL writes the heap alone, one part, and no index.
So, for each UPDATE statement (the columns it sets read from its text by
:mod:`service.db.assignments`):

* if it sets a column an index already has, or its text cannot be read, none of its
  rows is HOT: it is weighed as an insert is;
* otherwise its rows are HOT in the share the table's statistics show
  (``n_tup_hot_upd`` against ``n_tup_upd``, counting only the statements no index
  blocks), and a new index on columns it does not set adds a part only to the others;
* but a new index on a column it sets ends HOT for it: each such row then writes the
  heap and every index, the new one included, instead of the heap alone.

MERGE is weighed as an insert: its text does not say which of its rows are updates.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.assignments import updated_columns
from service.db.diagnostics import rows

_IDENTIFIER = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_WRITE_TARGET = re.compile(
    rf"(?is)^\s*(?:insert\s+into|update(?:\s+only)?|copy|merge\s+into)\s+"
    rf"({_IDENTIFIER}(?:\s*\.\s*{_IDENTIFIER})?)"
)
_UPDATE = re.compile(r"(?is)^\s*update\s")

STATEMENT_PARTS = 5.0
"""A statement's own work besides its rows (parsing, planning, starting the executor,
committing), in parts of a row. Without it a statement that writes one row has all
its time split between the heap and the indexes, and each index is taken for several
times what it adds. With it the model agrees with what PostgreSQL 15 does on both
kinds of statement: where each writes one row, an index entry costs about a sixth of
an update, and a HOT update made to write two indexes takes a third longer; where each
writes many rows, an index entry costs about what the heap's own row does."""


@dataclass(frozen=True, slots=True)
class Write:
    """One write statement of the workload."""

    rows: int
    ms: float
    calls: int = 1
    update: bool = False
    sets: frozenset[str] | None = None
    """For an UPDATE whose text could be read, the columns it sets."""

    def blocked(self, columns: Collection[str]) -> bool:
        """Whether an index on ``columns`` keeps this statement's rows from being HOT
        (an insert's never are; an UPDATE whose text could not be read is taken to set
        every column)."""
        return not self.update or self.sets is None or not self.sets.isdisjoint(columns)


@dataclass(slots=True)
class TableWrites:
    """The writes to one table, and how many of its updates were HOT."""

    statements: list[Write] = field(default_factory=list)
    updated: int = 0
    """``n_tup_upd``: rows updated since the table's statistics were reset."""
    hot: int = 0
    """``n_tup_hot_upd``: of those, updated without an index entry."""

    @property
    def rows(self) -> int:
        return sum(write.rows for write in self.statements)


@dataclass(frozen=True, slots=True)
class Cost:
    ms: float
    """Milliseconds the index would add to the writes."""
    hot_lost: int
    """Rows the workload updated heap-only that the index would make write every index."""


def added_cost(
    writes: TableWrites,
    columns: frozenset[str],
    share: float,
    parts: int,
    indexed: Collection[str],
    chosen: Collection[str] = (),
) -> Cost:
    """What an index on ``columns`` (every column it reads, its predicate's too),
    holding ``share`` of the rows, adds to ``writes``; ``parts``: 1 + the table's
    indexes; ``indexed``: the columns its existing indexes read, ``chosen``: those of
    the indexes suggested before this one (the model: the module's docstring)."""
    hot = _hot_share(writes, indexed)
    ms, lost = 0.0, 0.0
    for write in writes.statements:
        free = not (write.blocked(indexed) or write.blocked(chosen))
        heap_only = hot if free else 0.0
        # Its time in parts: its own work, the heap's part of a HOT row, and the heap's
        # and every index's parts of any other row.
        total = write.calls * STATEMENT_PARTS + write.rows * (heap_only + (1 - heap_only) * parts)
        if not total:
            continue
        part = write.ms / total
        ms += part * write.rows * (1 - heap_only) * share
        if free and write.blocked(columns):
            ms += part * write.rows * heap_only * parts
            lost += write.rows * heap_only
    return Cost(ms, round(lost))


def _hot_share(writes: TableWrites, indexed: Collection[str]) -> float:
    """The share of HOT rows among the updates no existing index blocks: the table's
    HOT rows over its updated rows, less the rows of the statements that cannot be HOT."""
    updates = [write for write in writes.statements if write.update]
    every = sum(write.rows for write in updates)
    free = sum(write.rows for write in updates if not write.blocked(indexed))
    if not writes.updated or not free:
        return 0.0
    return min(1.0, writes.hot / (writes.updated * free / every))


async def table_writes(conn: AsyncConnection) -> dict[str, TableWrites]:
    """The workload's writes by target table, schema-qualified and quoted."""
    written = await rows(
        conn,
        r"""
        SELECT query, calls, rows, total_exec_time AS total_ms FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query ~* '^\s*(insert|update|copy|merge)\s'
        """,
    )
    targets: dict[str, list[Write]] = {}
    for row in written:
        found = _WRITE_TARGET.match(row["query"])
        if found is not None:
            name = re.sub(r"\s*\.\s*", ".", found.group(1))
            update = _UPDATE.match(row["query"]) is not None
            sets = updated_columns(row["query"]) if update else None
            write = Write(int(row["rows"]), float(row["total_ms"]), int(row["calls"]), update, sets)
            targets.setdefault(name, []).append(write)
    if not targets:
        return {}
    resolved = await rows(
        conn,
        """
        SELECT t.name, format('%I.%I', n.nspname, c.relname) AS "table",
               coalesce(s.n_tup_upd, 0) AS updated, coalesce(s.n_tup_hot_upd, 0) AS hot
        FROM unnest(CAST(:names AS text[])) AS t(name)
        JOIN pg_class c ON c.oid = to_regclass(t.name)
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
        """,
        names=list(targets),
    )
    tables: dict[str, TableWrites] = {}
    for row in resolved:
        table = tables.setdefault(row["table"], TableWrites())
        table.statements += targets[row["name"]]
        table.updated, table.hot = int(row["updated"]), int(row["hot"])
    return tables
