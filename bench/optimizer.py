"""``python -m bench.optimizer``: a workload before and after what the report recommends.

A private PostgreSQL cluster (``pg_stat_statements`` preloaded; hypopg and pgstattuple
installed) gets a database of a common shape: customers, their orders and their events,
about a million rows, with the faults a real one collects: a foreign key without an
index, a duplicate index, an index nothing uses, a table bloated by updates with
autovacuum off for it, statistics never gathered. pgbench runs the custom scripts
(reads by customer, a read by primary key, an insert) one at a time, which shows what
the advice does to each statement's own cost, and then all at the same time, each by
a pgbench of its own, as an application's parts share one database, which shows what
it does to the workload: there a slow statement also slows every other by taking the
core from them. Each gives tps and latency percentiles from pgbench's
per-transaction logs.

The database is then copied (``CREATE DATABASE ... TEMPLATE``): the copy runs the
workload once, so that pg_stat_statements has seen it there, gets the optimizer's
report, and has every finding whose statement :meth:`QueryOptimizer.apply` accepts
applied, exactly as given and in report order. The measured runs then alternate
between the untouched database (before) and the copy (after), script by script and
then all scripts together, so both sides share the machine's drift; ``--runs`` runs of
each on each side, medians, and for each ratio the interval that holds its median with
a known chance.
Each run starts from the same orders: the rows earlier inserts added are deleted
first. On a shared virtual machine the host takes a core away in bursts (steal, in
``/proc/stat``): a pair of runs during which it took more than ``--max-steal`` of a
measured core is run again, and the least stolen pair is kept.

With ``--callgrind``, the cluster is then stopped and each script's cost per execution
on each side is counted by callgrind (instructions, last-level cache misses) in a
single-user backend: figures that do not drift with the machine (``bench.single_user``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from bench import core_profile, single_user
from bench.cpu import children, steal_and_total
from bench.report import publish
from service.db.diagnostics import Thresholds
from service.db.optimization import QueryOptimizer
from service.db.pool import ConnectionPool
from service.db.report import Finding, Report
from service.errors import ServiceError
from tests.support.private_postgres import PrivateCluster, postgres_bin, private_postgres

CUSTOMERS = 100_000
ORDERS = 500_000
EVENTS = 400_000


@dataclass(frozen=True, slots=True)
class Script:
    """One statement of the workload, with one parameter drawn uniformly from
    1..``high`` on each execution; ``tables``: what it reads or writes (with their
    indexes, its working set)."""

    variable: str
    high: int
    statement: str
    tables: tuple[str, ...]

    def pgbench(self) -> str:
        """The script as pgbench's ``-f`` reads it."""
        return f"\\set {self.variable} random(1, {self.high})\n{self.statement.strip()}\n"


SCRIPTS = {
    "orders of a customer": Script(
        "cid",
        CUSTOMERS,
        """SELECT id, status, total, created_at FROM orders
WHERE customer_id = :cid ORDER BY created_at DESC LIMIT 10;""",
        ("orders",),
    ),
    "clicks of a customer": Script(
        "cid",
        CUSTOMERS,
        "SELECT count(*) FROM events WHERE customer_id = :cid AND kind = 'click';",
        ("events",),
    ),
    "order by id": Script(
        "oid",
        ORDERS,
        "SELECT id, customer_id, status, total FROM orders WHERE id = :oid;",
        ("orders",),
    ),
    "new order": Script(
        "cid",
        CUSTOMERS,
        """INSERT INTO orders (customer_id, status, total, created_at)
VALUES (:cid, 'pending', 10 + :cid % 90, now());""",
        ("orders", "customers"),  # the foreign key's check reads customers
    ),
}

SCHEMA = [
    "CREATE EXTENSION pg_stat_statements",
    "CREATE EXTENSION hypopg",
    "CREATE EXTENSION pgstattuple",
    """CREATE TABLE customers (
        id integer PRIMARY KEY, email text NOT NULL, region integer NOT NULL,
        created_at timestamptz NOT NULL)""",
    """CREATE TABLE orders (
        id bigserial PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers,
        status text NOT NULL, total numeric(10, 2) NOT NULL, created_at timestamptz NOT NULL)""",
    """CREATE TABLE events (
        id bigserial PRIMARY KEY, customer_id integer NOT NULL, kind text NOT NULL,
        payload text NOT NULL, created_at timestamptz NOT NULL)
        WITH (autovacuum_enabled = false)""",
    f"""INSERT INTO customers
        SELECT i, 'c' || i || '@example.com', i % 20, now() - i * interval '1 minute'
        FROM generate_series(1, {CUSTOMERS}) AS i""",
    f"""INSERT INTO orders (customer_id, status, total, created_at)
        SELECT 1 + (i::bigint * 7919) % {CUSTOMERS},
               (ARRAY['pending', 'paid', 'shipped', 'delivered'])[1 + i % 4],
               (i % 500) + 0.99, now() - i * interval '1 second'
        FROM generate_series(1, {ORDERS}) AS i""",
    f"""INSERT INTO events (customer_id, kind, payload, created_at)
        SELECT 1 + (i::bigint * 104729) % {CUSTOMERS}, (ARRAY['view', 'click', 'cart'])[1 + i % 3],
               repeat('x', 60), now() - i * interval '1 second'
        FROM generate_series(1, {EVENTS}) AS i""",
    # Someone's report index, and its duplicate; nothing in the workload uses either.
    "CREATE INDEX orders_created_at ON orders (created_at)",
    "CREATE INDEX orders_created_at_status ON orders (created_at, status)",
    # Events rewritten twice with autovacuum off: two thirds of the table is dead rows.
    "UPDATE events SET payload = repeat('y', 60)",
    "UPDATE events SET payload = repeat('z', 60)",
]


RESET = [
    f"DELETE FROM orders WHERE id > {ORDERS}",
    "VACUUM orders",
    "CHECKPOINT",
]
"""Before each side: the orders the previous side's inserts added go, so both sides
start from the same rows (a plain VACUUM: statistics are the report's business)."""


@dataclass(frozen=True, slots=True)
class Run:
    tps: float
    p50_ms: float
    p99_ms: float
    steal: float
    """The share of the measured cores' time the hypervisor gave to other guests."""
    transactions: int
    samples: Counter[str] = field(default_factory=Counter)
    """With ``--perf``: the cluster's core sampled during the run, by function."""


DATABASE_CORE, CLIENT_CORE = 0, 1
"""Where the cluster and pgbench run, on a machine with two cores or more. Unpinned, a
run's tps depended on where the scheduler put the backends and pgbench's threads: the
same script on the same database gave 62k and 85k tps in alternate runs."""


def pinning() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pin_cluster(data: Path) -> None:
    """The postmaster, its helper processes and every backend it forks from now on, on
    DATABASE_CORE (a forked process keeps its parent's CPU affinity)."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    for pid in [postmaster, *children(postmaster)]:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, {DATABASE_CORE})


def pgbench(
    dsn: str, script: Path, seconds: int, clients: int, work: Path, profile: bool = False
) -> Run:
    """One pgbench run of ``script`` alone: tps and latency percentiles from its log, and
    the steal on the cores it ran on (all of them when nothing is pinned). With
    ``profile`` (pinned only), the cluster's core is sampled with perf during the run."""
    return pgbench_at_once(dsn, {"": script}, seconds, clients, work, profile)[""]


def pgbench_at_once(
    dsn: str,
    scripts: dict[str, Path],
    seconds: int,
    clients: int,
    work: Path,
    profile: bool = False,
) -> dict[str, Run]:
    """``scripts`` (name to file) run at the same time, each by a pgbench of its own with
    ``clients`` clients, as the parts of an application share one database: each
    script's tps and latency percentiles from its own log, and the steal on the cores
    they ran on, which all of them share. With ``profile``, the cluster's core is
    sampled during the run (what it adds up is the whole core's, so it is each
    script's own only when it runs alone)."""
    logs = {name: work / f"pgbench{number}" for number, name in enumerate(scripts)}
    for log in logs.values():
        log.mkdir(exist_ok=True)
        for old in log.glob("pgbench_log.*"):
            old.unlink()
    cores = {DATABASE_CORE, CLIENT_CORE} if pinning() else None
    samples = work / "perf.data"
    sampling = (
        core_profile.sampling(DATABASE_CORE, samples) if profile else contextlib.nullcontext()
    )
    steal_from, total_from = steal_and_total(cores)
    with sampling:
        running = {
            name: _pgbench(dsn, scripts[name], seconds, clients, log) for name, log in logs.items()
        }
        try:
            outs = {name: _finished(process) for name, process in running.items()}
        finally:
            for process in running.values():  # the others, when one failed
                if process.poll() is None:
                    process.kill()
                    process.wait()
    steal_to, total_to = steal_and_total(cores)
    steal = (steal_to - steal_from) / max(1, total_to - total_from)
    sampled = core_profile.read(samples) if profile else Counter()
    return {name: _run(outs[name], logs[name], steal, sampled) for name in scripts}


def _run(out: str, log: Path, steal: float, samples: Counter[str]) -> Run:
    latencies = sorted(
        int(line.split()[2]) / 1000
        for path in log.glob("pgbench_log.*")
        for line in path.read_text().splitlines()
    )
    if not latencies:
        raise SystemExit(f"pgbench logged no transaction:\n{out}")
    return Run(
        _reading(out, "tps ="),
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        steal,
        int(_reading(out, "number of transactions actually processed:")),
        samples,
    )


def _reading(out: str, label: str) -> float:
    """The number after ``label`` at the start of a line of pgbench's summary."""
    return next(
        float(line.removeprefix(label).split()[0])
        for line in out.splitlines()
        if line.startswith(label)
    )


def _pgbench(
    dsn: str, script: Path, seconds: int, clients: int, log: Path
) -> subprocess.Popen[str]:
    """pgbench started on ``script``, its per-transaction log in the folder ``log``."""
    pinned = ["taskset", "-c", str(CLIENT_CORE)] if pinning() else []
    return subprocess.Popen(
        [
            *pinned,
            str(postgres_bin() / "pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
            "-f",
            str(script),
            "-l",
            "--log-prefix",
            str(log / "pgbench_log"),
            dsn,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=log,
    )


def _finished(process: subprocess.Popen[str]) -> str:
    """What pgbench printed, once it has ended; its error when it failed."""
    out, err = process.communicate()
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, process.args, out, err)
    return out


def workload(dsn: str, scripts: dict[str, Path], args: argparse.Namespace, work: Path) -> None:
    """Every script, one at a time, unmeasured, each for ``args.seconds`` and then again
    until it has run as many times as the report asks of a slow statement
    (``Thresholds.slow_query_calls``, PgHero's 100): with one client and a few seconds,
    a scan of 60 ms would stop short of it, and the report would not see it."""
    for path in scripts.values():
        done = 0
        while done < Thresholds().slow_query_calls:
            done += pgbench(dsn, path, args.seconds, args.clients, work).transactions


async def run_sql(url: str, *statements: str) -> None:
    async with ConnectionPool(url, statement_timeout=600) as pool, pool.connection() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)


@dataclass(frozen=True, slots=True)
class Measured:
    """The kept runs (side to script to one run per round), and how many pairs of runs
    were run again for steal, or kept with it after the last attempt."""

    runs: dict[str, dict[str, list[Run]]]
    repeated: int
    kept_with_steal: int


async def measure(
    sides: dict[str, str], groups: list[dict[str, Path]], args: argparse.Namespace, work: Path
) -> Measured:
    """``args.runs`` rounds; in each, every group of scripts (name to file) on every side
    (``sides``: name to libpq DSN), one group at a time and the scripts of a group at
    the same time (:func:`pgbench_at_once`), each run after the inserts of the ones
    before it are deleted. Every other round goes through the sides in reverse order.

    A group's pair of runs during which the host took more than ``args.max_steal`` of
    a measured core, on either side, is run again, up to ``args.attempts`` times in
    all, and the pair with the least steal is kept: a burst of steal on one side of a
    pair moves its ratio by more than the differences this bench is for. With
    ``args.perf``, the cluster's core is sampled during the runs of a script alone."""
    runs: dict[str, dict[str, list[Run]]] = {
        side: {name: [] for group in groups for name in group} for side in sides
    }
    repeated = kept_with_steal = 0
    for round_number in range(args.runs):
        order = list(sides) if round_number % 2 == 0 else list(reversed(sides))
        for group in groups:
            profile = args.perf and len(group) == 1
            kept: dict[str, dict[str, Run]] = {}
            for attempt in range(args.attempts):
                pair: dict[str, dict[str, Run]] = {}
                for side in order:
                    await run_sql(sqlalchemy_url(sides[side]), *RESET)
                    pair[side] = await asyncio.to_thread(
                        pgbench_at_once,
                        sides[side],
                        group,
                        args.seconds,
                        args.clients,
                        work,
                        profile,
                    )
                print(  # progress, and the spread the table sums up
                    f"round {round_number + 1} {' + '.join(group)} attempt {attempt + 1}: "
                    + "; ".join(
                        f"{side} "
                        + ", ".join(f"{run.tps:,.0f}" for run in side_runs.values())
                        + f" tps (steal {_steal(side_runs):.1%})"
                        for side, side_runs in pair.items()
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                if not kept or _pair_steal(pair) < _pair_steal(kept):
                    kept = pair
                if _pair_steal(pair) <= args.max_steal:
                    break
                if attempt + 1 < args.attempts:
                    repeated += 1
            kept_with_steal += _pair_steal(kept) > args.max_steal
            for side in sides:
                for name in group:
                    runs[side][name].append(kept[side][name])
    return Measured(runs, repeated, kept_with_steal)


def _pair_steal(pair: dict[str, dict[str, Run]]) -> float:
    return max(_steal(side_runs) for side_runs in pair.values())


def _steal(runs: dict[str, Run]) -> float:
    return max(run.steal for run in runs.values())


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def report_and_apply(url: str) -> tuple[Report, float, list[tuple[Finding, str]]]:
    """The report (and the seconds it took), then each applicable finding applied."""
    async with ConnectionPool(url, statement_timeout=600) as pool:
        optimizer = QueryOptimizer(pool, statement_timeout=600)
        started = time.perf_counter()
        report = await optimizer.report()
        took = time.perf_counter() - started
        applied: list[tuple[Finding, str]] = []
        done: set[str] = set()
        for _, finding in report.findings:
            if not finding.ddl or finding.ddl in done:
                continue  # two checks may name one statement (an index unused and covered)
            done.add(finding.ddl)
            try:
                seconds = await optimizer.apply(finding)
            except (ServiceError, DBAPIError) as exc:
                applied.append((finding, f"not applied: {str(exc).splitlines()[0]}"))
                continue
            applied.append((finding, f"{seconds:.2f} s"))
    return report, took, applied


def median(runs: list[Run], field: str) -> float:
    return float(statistics.median(float(getattr(run, field)) for run in runs))


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """A distribution-free interval for the median of what ``values`` are drawn from:
    their k-th smallest and k-th largest, with k as large as keeps the chance that the
    interval holds the median at ``confidence`` or more (each value falls on either
    side of the median with even odds, so the count below it is binomial). With too few
    values for ``confidence``, the smallest and the largest. Returns the two ends and
    the chance they hold the median."""
    ordered = sorted(values)
    n = len(ordered)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, below) for below in range(k)) / (1 << n)

    k = 1
    while 2 * (k + 1) <= n and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


async def single_user_costs(
    cluster: PrivateCluster,
    sides: dict[str, str],
    measured: dict[str, dict[str, list[Run]]],
    last_level: str | None = None,
) -> dict[str, dict[str, single_user.Cost]]:
    """Each script's cost per execution on each side (``sides``: name to libpq DSN),
    counted by callgrind in a single-user backend on the stopped cluster, both sides
    from the same orders. The number of executions follows the side's measured tps,
    3 to 2,000: a scan of a second costs minutes under callgrind, and a short run of a
    fast statement counts the simulated cache's warming more than the statement."""
    for dsn in sides.values():
        await run_sql(sqlalchemy_url(dsn), *RESET)
    await cluster.stop()
    costs: dict[str, dict[str, single_user.Cost]] = {side: {} for side in sides}
    for name in measured[next(iter(sides))]:
        script = SCRIPTS[name]
        for side, dsn in sides.items():
            executions = max(3, min(2000, int(median(measured[side][name], "tps") / 5)))
            costs[side][name] = await single_user.cost(
                cluster.bin / "postgres",
                cluster.data,
                dsn.rsplit("/", 1)[1],
                cluster.settings,
                script.statement,
                script.variable,
                script.high,
                executions,
                script.tables,
                last_level=last_level,
            )
    return costs


def render_costs(costs: dict[str, dict[str, single_user.Cost]]) -> str:
    """The callgrind table: instructions and last-level cache misses per execution."""
    before, after = costs["before"], costs["after"]
    lines = [
        "",
        "Per execution in a single-user backend, counted by callgrind (the same statements"
        " and data on both sides; the work and memory traffic of the statement alone,"
        " without what concurrency adds):",
        "",
        "| script | before instructions | after instructions | after / before"
        " | before LL misses | after LL misses | after / before |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in before:
        b, a = before[name], after[name]
        lines.append(
            f"| {name} | {b.instructions:,.0f} | {a.instructions:,.0f}"
            f" | {_ratio(a.instructions, b.instructions)} | {b.ll_misses:,.1f}"
            f" | {a.ll_misses:,.1f} | {_ratio(a.ll_misses, b.ll_misses)} |"
        )
    return "\n".join(lines) + "\n"


def render_profiles(runs: dict[str, dict[str, list[Run]]], shown: int = 6) -> str:
    """The perf table: each script's core time per transaction on each side, over the
    kept runs, and the functions whose time per transaction differs most."""
    lines = [
        "",
        f"The cluster's core, sampled by perf ({core_profile.FREQUENCY} cpu-clock samples a"
        " second) during the kept runs: microseconds per transaction it was busy, and the"
        " functions whose time per transaction differs most (after - before, µs; the"
        " backends' own code `[.]`, the kernel's `[k]`):",
        "",
        "| script | before µs | after µs | after / before | largest differences |",
        "|---|---:|---:|---:|---|",
    ]
    for name in runs["before"]:
        before, after = core_profile.Profile(), core_profile.Profile()
        for side, profile in (("before", before), ("after", after)):
            for run in runs[side][name]:
                profile.add(run.samples, run.transactions)
        b, a = before.per_transaction(), after.per_transaction()
        functions = {*a, *b} - {core_profile.IDLE}
        differences = sorted(
            ((a.get(function, 0.0) - b.get(function, 0.0), function) for function in functions),
            key=lambda item: -abs(item[0]),
        )
        largest = ", ".join(
            f"`{function.removeprefix('postgres ')}` {difference:+.2f}"
            for difference, function in differences[:shown]
        )
        lines.append(
            f"| {name} | {before.busy():,.1f} | {after.busy():,.1f}"
            f" | {_ratio(after.busy(), before.busy())} | {largest} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(after: float, before: float) -> str:
    """Three significant digits: a scan that became a lookup reads 0.000331, not 0.000."""
    return f"{after / before:.3g}" if before else "-"


def render(
    args: argparse.Namespace,
    alone: Measured,
    together: Measured | None,
    report_seconds: float,
    applied: list[tuple[Finding, str]],
    elapsed: float,
) -> str:
    """The command, the statements applied, and the tps table of the scripts run all at
    once (when more than one was measured) and of each run alone."""
    pinned = f" (on core {CLIENT_CORE}, the cluster on core {DATABASE_CORE})" if pinning() else ""
    only = "".join(f" --only '{name}'" for name in args.only or ())
    steal = f" --max-steal {args.max_steal:g} --attempts {args.attempts}"
    coverage = median_interval([0.0] * args.runs)[2]
    measured = [alone, *([together] if together else [])]
    pairs = args.runs * (len(alone.runs["before"]) + (1 if together else 0))
    at_once = " and all of them at once, each by its own pgbench," if together else ""
    lines = [
        f"`python -m bench.optimizer --runs {args.runs} --seconds {args.seconds}"
        f" --clients {args.clients}{steal}{only}{' --perf' if args.perf else ''}"
        f"{' --callgrind' if args.callgrind else ''}"
        f"{f' --last-level {args.last_level}' if args.last_level else ''}`:"
        f" {CUSTOMERS:,} customers, {ORDERS:,} orders,"
        f" {EVENTS:,} events; pgbench -M prepared with {args.clients}"
        f" client{'' if args.clients == 1 else 's'} a script"
        f"{pinned}, medians of {args.runs} rounds, each running every script alone{at_once}"
        f" on the database as built and on its copy with the advice applied, side by side"
        f" (after / before: the median of the rounds' ratios, and the interval that holds"
        f" the median of such ratios with a chance of {coverage:.1%}); a pair of runs"
        f" during which the host took more than {args.max_steal:.0%} of a measured core"
        f" was run again, up to {args.attempts} times in all"
        f" ({sum(m.repeated for m in measured)} pairs run again of {pairs};"
        f" {sum(m.kept_with_steal for m in measured)} kept above it); the report took"
        f" {report_seconds:.2f} s; took {elapsed:.0f} s.",
        "",
        "Applied, in report order:",
        "",
    ]
    lines += [f"- `{finding.ddl}` ({outcome})" for finding, outcome in applied]
    if together:
        lines += ["", "The workload, every script at the same time:", *_tps_table(together)]
    lines += ["", "Each script alone:", *_tps_table(alone)]
    return "\n".join(lines) + "\n"


def _tps_table(measured: Measured) -> list[str]:
    before, after = measured.runs["before"], measured.runs["after"]
    lines = [
        "",
        "| script | before tps | before p99 ms | after tps | after p99 ms | after / before"
        " | interval |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in before:
        b_tps, a_tps = median(before[name], "tps"), median(after[name], "tps")
        # The runs of a round ran side by side: the median of their ratios.
        ratios = [a.tps / b.tps for a, b in zip(after[name], before[name], strict=True) if b.tps]
        low, high, _ = median_interval(ratios)
        lines.append(
            f"| {name} | {b_tps:,.0f} | {median(before[name], 'p99_ms'):.1f} | {a_tps:,.0f}"
            f" | {median(after[name], 'p99_ms'):.1f} | {statistics.median(ratios):.2f}"
            f" | {low:.2f}-{high:.2f} |"
        )
    return lines


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, not {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.optimizer", description=__doc__)
    parser.add_argument("--runs", type=at_least_one, default=3)
    parser.add_argument("--seconds", type=at_least_one, default=10)
    parser.add_argument("--clients", type=at_least_one, default=4)
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="also count each script's instructions and cache misses per execution on"
        " both sides with valgrind (deterministic where tps drifts; adds minutes)",
    )
    parser.add_argument(
        "--perf",
        action="store_true",
        help="sample the cluster's core with perf during each run, and show where each"
        " side spends its time per transaction (needs perf, and two cores to pin to)",
    )
    parser.add_argument(
        "--last-level",
        metavar="SIZE,ASSOC,LINE",
        help="with --callgrind, the simulated last-level cache (valgrind's --LL), in"
        " place of this processor's: its core's own L2, say, where the L3 is shared"
        " with other guests",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SCRIPTS),
        help="measure this script only (repeat for several, which then also run at the same"
        " time); the report still sees all",
    )
    parser.add_argument(
        "--max-steal",
        type=_share,
        default=0.03,
        help="run a pair of runs again when the host took more than this share of a"
        " measured core during either (default 0.03)",
    )
    parser.add_argument(
        "--attempts",
        type=at_least_one,
        default=3,
        help="runs of a pair at most, the first included; the least stolen is kept",
    )
    parser.add_argument("--output", type=Path, default=Path("bench/results/optimizer.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.perf:
        if not pinning():
            raise SystemExit("--perf samples the cluster's own core: it needs two cores")
        if (reason := core_profile.available()) is not None:
            raise SystemExit(f"--perf: {reason}")
    started = time.monotonic()

    async def build(url: str) -> None:
        await run_sql(url, *SCHEMA)
        await run_sql(url, "SELECT pg_stat_statements_reset()")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scripts = {}
        for number, (name, script) in enumerate(SCRIPTS.items()):
            path = work / f"script{number}.sql"
            path.write_text(script.pgbench())
            scripts[name] = path

        async def phases() -> str:
            async with private_postgres(
                ["shared_preload_libraries=pg_stat_statements", "autovacuum=off"]
            ) as cluster:
                if pinning():
                    pin_cluster(cluster.data)
                base = cluster.dsn.rsplit("/", 1)[0]
                sides = {"before": f"{base}/shop", "after": f"{base}/shop_after"}
                await run_sql(cluster.url, "CREATE DATABASE shop")
                await build(sqlalchemy_url(sides["before"]))
                await run_sql(cluster.url, "CREATE DATABASE shop_after TEMPLATE shop")
                # The copy sees the workload once, then gets the report and its statements.
                after_url = sqlalchemy_url(sides["after"])
                await run_sql(after_url, "SELECT pg_stat_statements_reset()", *RESET)
                await asyncio.to_thread(workload, sides["after"], scripts, args, work)
                report, took, applied = await report_and_apply(after_url)
                print(report.as_text(), file=sys.stderr)
                chosen = {name: scripts[name] for name in args.only or scripts}
                alone = await measure(sides, [{n: p} for n, p in chosen.items()], args, work)
                together = await measure(sides, [chosen], args, work) if len(chosen) > 1 else None
                costs = render_profiles(alone.runs) if args.perf else ""
                if args.callgrind:
                    counted = await single_user_costs(cluster, sides, alone.runs, args.last_level)
                    costs += render_costs(counted)
                took_all = time.monotonic() - started
                return render(args, alone, together, took, applied, took_all) + costs

        text = asyncio.run(phases())
    publish(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
