"""What one more index would add to the time the workload spends writing its table.

The workload's writes are pg_stat_statements' INSERT, UPDATE, COPY and MERGE
statements, by target table: their calls, rows and execution time, the same period
the advisor's reads cover. Each statement's time is split in parts: its own work
(:data:`STATEMENT_PARTS` a call), then for each row the heap's part
(:data:`HEAP_PART`) and a part for the entry it writes into each index. An entry
costs a whole part where its key's place has to be found from the index's root, and
less (:data:`ORDERED_PART`) where an insert's keys arrive in order. A partial index
takes its part only for the rows it holds. The new index's parts, at the time a part
of each statement took, are what it adds.

An UPDATE can be heap-only (HOT): when no column of any index changes and the new
version fits on its page, PostgreSQL writes the heap alone and no index. So, for each
UPDATE statement (the columns it sets read from its text by
:mod:`service.db.assignments`):

* if it sets a column an index already has, or its text cannot be read, none of its
  rows is HOT;
* otherwise its rows are HOT in the share the table's statistics show
  (``n_tup_hot_upd`` against ``n_tup_upd``, counting only the statements no index
  blocks), and a new index on columns it does not set adds its part only to the
  others;
* but a new index on a column it sets ends HOT for it: each such row then writes an
  entry into every index, the new one included.

MERGE is weighed as an insert: its text does not say which of its rows are updates.
The weights are what pgbench measured on PostgreSQL 15 for single-row and 1,000-row
statements (``python -m bench.write_cost`` sets the model beside such measurements).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
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

STATEMENT_PARTS = 7.0
"""A statement's own work besides its rows (parsing, planning, starting the executor,
committing), in parts: where a statement writes one row, most of its time."""
HEAP_PART = 0.5
"""A row written to the heap, in parts: appending a row costs less than finding the
place of a key in an index."""
ORDERED_PART = 0.25
"""An entry an insert writes into an index whose keys arrive in order (ids, creation
times): B-tree inserts such a key where the last one went, without a descent through
pages the processor's cache does not hold."""
ORDERED_CORRELATION = 0.9
"""How closely (``pg_stats.correlation``, either sign) the rows' physical order must
follow an index's leading column for its keys to count as arriving in order."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What the model needs of an index."""

    columns: frozenset[str]
    """The names of every column it reads, its expressions' and predicate's included."""
    ordered: bool = False
    """Whether the rows' physical order follows its leading column
    (:data:`ORDERED_CORRELATION`): an insert's key then lands where the last did."""
    share: float = 1.0
    """The share of the table's rows it holds."""

    @property
    def insert_part(self) -> float:
        """What an insert adds to it, per row of the table."""
        return (ORDERED_PART if self.ordered else 1.0) * self.share


@dataclass(frozen=True, slots=True)
class Write:
    """One write statement of the workload."""

    rows: int
    ms: float
    calls: int = 1
    update: bool = False
    sets: frozenset[str] | None = None
    """For an UPDATE whose text could be read, the columns it sets."""

    def may_set(self, columns: Collection[str]) -> bool:
        """Whether this UPDATE may set one of ``columns`` (one whose text could not be
        read may set any)."""
        return self.sets is None or not self.sets.isdisjoint(columns)


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
    new: Shape,
    indexes: Sequence[Shape],
    chosen: Sequence[Shape] = (),
) -> Cost:
    """What ``new`` adds to ``writes``, on a table with ``indexes``, and ``chosen``:
    the indexes suggested before this one (the model: the module's docstring)."""
    hot = _hot_share(writes, frozenset().union(*(index.columns for index in indexes)))
    every = [*indexes, *chosen]
    insert_row = HEAP_PART + sum(index.insert_part for index in every)
    # An update that is not HOT writes each index an entry whose key, unchanged or
    # not, goes wherever that row's key sorts: never the ordered case.
    update_row = HEAP_PART + sum(index.share for index in every)
    ms, lost = 0.0, 0.0
    for write in writes.statements:
        own = write.calls * STATEMENT_PARTS
        if not write.update:
            total, added = own + write.rows * insert_row, write.rows * new.insert_part
        else:
            free = not any(write.may_set(index.columns) for index in every)
            heap_only = hot if free else 0.0
            others = write.rows * (1 - heap_only)
            total = own + write.rows * heap_only * HEAP_PART + others * update_row
            added = others * new.share
            if free and write.may_set(new.columns):
                # Its HOT rows now write every index, the new one too.
                added += write.rows * heap_only * (update_row - HEAP_PART + new.share)
                lost += write.rows * heap_only
        if total:
            ms += write.ms * added / total
    return Cost(ms, round(lost))


def _hot_share(writes: TableWrites, indexed: frozenset[str]) -> float:
    """The share of HOT rows among the updates no existing index blocks: the table's
    HOT rows over its updated rows, less the rows of the statements that cannot be HOT."""
    updates = [write for write in writes.statements if write.update]
    every = sum(write.rows for write in updates)
    free = sum(write.rows for write in updates if not write.may_set(indexed))
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
