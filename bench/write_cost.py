"""``python -m bench.write_cost``: what one more index costs a write, measured, beside
what the advisor's write model (:mod:`service.db.write_cost`) says it costs.

Each case is a table and one pgbench script that writes it, run on the table as it is
and on a copy with one index more, side by side in each round (every other round the
other way round), on a private PostgreSQL cluster pinned to core 0 and pgbench on
core 1. The measured figure is the time a statement takes with the index over the time
without (the ratio of tps, inverted; the core is saturated, so its time per statement
is what tps measures). The model's figure is what :func:`added_cost` charges the index,
fed the statement's calls and rows and the table's HOT updates from the run without
it, over the statement's time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.optimizer import at_least_one, pgbench, pin_cluster, pinning, run_sql, sqlalchemy_url
from bench.report import publish
from service.db.pool import ConnectionPool
from service.db.write_cost import Shape, TableWrites, Write, added_cost
from tests.support.private_postgres import private_postgres

ROWS = 100_000


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    table: list[str]
    """Statements that build the table as it is."""
    index: str
    """The index the other side has."""
    columns: frozenset[str]
    """The columns that index reads."""
    script: str
    """pgbench's script: one statement."""
    rows_per_call: int
    sets: frozenset[str] | None = None
    """For an UPDATE, the columns it sets."""
    ordered: bool = False
    """Whether the statement's keys for that index arrive in order."""


def _table(fillfactor: int) -> list[str]:
    return [
        f"""CREATE TABLE w (id bigint PRIMARY KEY, a integer NOT NULL, b integer NOT NULL,
            pad text NOT NULL) WITH (fillfactor = {fillfactor})""",
        f"""INSERT INTO w SELECT i, (i::bigint * 7919) % {ROWS},
            (i::bigint * 104729) % {ROWS}, repeat('x', 40)
            FROM generate_series(1, {ROWS}) AS i""",
        "VACUUM ANALYZE w",
    ]


_UPDATE = f"\\set id random(1, {ROWS})\nUPDATE w SET a = a + 1 WHERE id = :id;\n"

_INSERT_ONE = (
    f"\\set k random(1, {ROWS})\n"
    "INSERT INTO w VALUES (nextval('w_ids'), currval('w_ids'), :k, 'x');\n"
)
_INSERT_MANY = (
    "INSERT INTO w SELECT n, n, (random() * 1e9)::integer, 'x'"
    " FROM (SELECT nextval('w_ids') AS n FROM generate_series(1, 1000)) AS s;\n"
)
"""Inserts whose ``a`` grows with ``id`` (past every value the table holds) and whose
``b`` is random: an index on ``a`` takes each key at its right edge, one on ``b`` finds
each key's place from the root."""
_SEQUENCE = "CREATE SEQUENCE w_ids START 1000000"

CASES = [
    Case(
        "HOT update, index on a column it does not set",
        _table(50),
        "CREATE INDEX ON w (b)",
        frozenset({"b"}),
        _UPDATE,
        1,
        frozenset({"a"}),
    ),
    Case(
        "HOT update, index on the column it sets",
        _table(50),
        "CREATE INDEX ON w (a)",
        frozenset({"a"}),
        _UPDATE,
        1,
        frozenset({"a"}),
    ),
    Case(
        "update of full pages, index on a column it does not set",
        _table(100),
        "CREATE INDEX ON w (b)",
        frozenset({"b"}),
        _UPDATE,
        1,
        frozenset({"a"}),
    ),
    Case(
        "insert of one row, random key",
        [*_table(100), _SEQUENCE],
        "CREATE INDEX ON w (b)",
        frozenset({"b"}),
        _INSERT_ONE,
        1,
    ),
    Case(
        "insert of one row, growing key",
        [*_table(100), _SEQUENCE],
        "CREATE INDEX ON w (a)",
        frozenset({"a"}),
        _INSERT_ONE,
        1,
        ordered=True,
    ),
    Case(
        "insert of 1,000 rows, random key",
        [*_table(100), _SEQUENCE],
        "CREATE INDEX ON w (b)",
        frozenset({"b"}),
        _INSERT_MANY,
        1000,
    ),
    Case(
        "insert of 1,000 rows, growing key",
        [*_table(100), _SEQUENCE],
        "CREATE INDEX ON w (a)",
        frozenset({"a"}),
        _INSERT_MANY,
        1000,
        ordered=True,
    ),
]


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    ratios: list[float]
    """Per round: time per statement with the index over without."""
    modelled: float
    """The model's: the statement's time with the index over without."""
    hot: float | None
    """For an UPDATE, the share of its rows that were HOT without the index."""


async def _hot(url: str) -> tuple[int, int]:
    """(n_tup_upd, n_tup_hot_upd) of ``w`` (pgbench's backends flushed theirs as they
    exited)."""
    async with ConnectionPool(url) as pool, pool.connection() as conn:
        found = await conn.exec_driver_sql(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'w'"
        )
        row = found.mappings().one()
        return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])


def model(case: Case, updated: int, hot: int) -> float:
    """The model's ratio for ``case``: the statement's time (1) plus what
    :func:`added_cost` charges the index, on a table with one index (its key)."""
    update = case.sets is not None
    statement = Write(case.rows_per_call, 1.0, 1, update, case.sets)
    writes = TableWrites([statement], updated=updated, hot=hot)
    # The primary key takes ids from a sequence: in order.
    key = Shape(frozenset({"id"}), ordered=True)
    cost = added_cost(writes, Shape(case.columns, case.ordered), [key])
    return 1.0 + cost.ms


async def run_case(
    case: Case, admin: str, base: str, args: argparse.Namespace, work: Path
) -> Outcome:
    """``args.runs`` rounds of ``case``, each building both sides afresh."""
    sides = {"without": f"{base}/w_without", "with": f"{base}/w_with"}
    script = work / "script.sql"
    script.write_text(case.script)
    ratios: list[float] = []
    stats: tuple[int, int] = (0, 0)
    for round_number in range(args.runs):
        order = list(sides) if round_number % 2 == 0 else list(reversed(sides))
        tps: dict[str, float] = {}
        for side in order:
            url = sqlalchemy_url(sides[side])
            database = sides[side].rsplit("/", 1)[1]
            await run_sql(admin, f"DROP DATABASE IF EXISTS {database}")
            await run_sql(admin, f"CREATE DATABASE {database}")
            await run_sql(url, *case.table, *([case.index] if side == "with" else []))
            await run_sql(url, "SELECT pg_stat_reset()", "CHECKPOINT")
            run = await asyncio.to_thread(
                pgbench, sides[side], script, args.seconds, args.clients, work
            )
            tps[side] = run.tps
            if side == "without":
                stats = await _hot(url)
        ratios.append(tps["without"] / tps["with"])
        print(
            f"round {round_number + 1} {case.name}: without {tps['without']:,.0f} tps,"
            f" with {tps['with']:,.0f} tps",
            file=sys.stderr,
            flush=True,
        )
    updated, hot = stats
    share = hot / updated if case.sets is not None and updated else None
    return Outcome(case, ratios, model(case, updated, hot), share)


def render(args: argparse.Namespace, outcomes: list[Outcome], took: float) -> str:
    lines = [
        f"`python -m bench.write_cost --runs {args.runs} --seconds {args.seconds}"
        f" --clients {args.clients}`: a {ROWS:,}-row table with a primary key, and a copy"
        " with one index more; pgbench -M prepared, one statement a transaction"
        f" (on core 1, the cluster on core 0); medians of {args.runs} rounds; took"
        f" {took:.0f} s.",
        "",
        "| case | index | HOT without it | measured: time with / without | model | rounds |",
        "|---|---|---:|---:|---:|---|",
    ]
    for outcome in outcomes:
        measured = statistics.median(outcome.ratios)
        spread = ", ".join(f"{ratio:.2f}" for ratio in outcome.ratios)
        hot = "" if outcome.hot is None else f"{outcome.hot:.0%}"
        lines.append(
            f"| {outcome.case.name} | `{outcome.case.index}` | {hot} | {measured:.2f}"
            f" | {outcome.modelled:.2f} | {spread} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.write_cost", description=__doc__)
    parser.add_argument("--runs", type=at_least_one, default=3)
    parser.add_argument("--seconds", type=at_least_one, default=5)
    parser.add_argument("--clients", type=at_least_one, default=4)
    parser.add_argument("--output", type=Path, default=Path("bench/results/write_cost.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    async def cases(work: Path) -> list[Outcome]:
        async with private_postgres(["autovacuum=off"]) as cluster:
            if pinning():
                pin_cluster(cluster.data)
            base = cluster.dsn.rsplit("/", 1)[0]
            return [await run_case(case, cluster.url, base, args, work) for case in CASES]

    with tempfile.TemporaryDirectory() as tmp:
        outcomes = asyncio.run(cases(Path(tmp)))
    text = render(args, outcomes, time.monotonic() - started)
    publish(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
