"""The benchmark works end to end (smoke mode): it measures, it does not judge speed."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from bench import core_profile, single_user, write_cost
from bench.__main__ import scenarios
from bench.cpu import steal_and_total
from bench.optimizer import SCRIPTS, median_interval, parse_args
from bench.optimizer import main as optimizer_main
from bench.report import NOT_BUILT
from bench.wrk import parse
from service.db.write_cost import HEAP_PART, ORDERED_PART, STATEMENT_PARTS
from tests.support.private_postgres import private_postgres

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the repository's root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:1/results/x
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.00ms    2.00ms  30.00ms   90.00%
  Latency Distribution
     50%  812.00us
     75%   10.00ms
     90%   20.00ms
     99%    1.50s
  1000 requests in 1.00s, 1.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 10
Requests/sec:   1000.50
Transfer/sec:      1.00MB
STATUS 200 990
STATUS 503 10
"""


def test_wrk_output_is_parsed() -> None:
    result = parse(WRK_OUTPUT)
    assert result.requests_per_second == 1000.5
    assert result.p50_ms == pytest.approx(0.812)
    assert result.p99_ms == pytest.approx(1500.0)
    assert result.statuses == {200: 990, 503: 10}
    assert result.unexpected == {503: 10}
    assert result.socket_errors == 5
    assert result.requests == 1000


def test_median_interval_takes_the_order_statistics_that_hold_the_median() -> None:
    """Five values: only the smallest and the largest hold the median with a chance of
    95% or so (15/16). Fifteen: the 4th smallest and the 4th largest (96.5%); and over
    many draws from a skewed distribution, that interval holds its true median about as
    often as it claims."""
    assert median_interval([3.0, 1.0, 5.0, 2.0, 4.0]) == (1.0, 5.0, 0.9375)
    low, high, coverage = median_interval([float(value) for value in range(15, 0, -1)])
    assert (low, high) == (4.0, 12.0)
    assert coverage == pytest.approx(0.9648, abs=1e-4)
    draw = random.Random(11)
    true_median = math.log(2)  # of an exponential distribution of rate 1
    trials = 4000
    held = 0
    for _ in range(trials):
        low, high, _ = median_interval([draw.expovariate(1.0) for _ in range(15)])
        held += low <= true_median <= high
    assert 0.95 <= held / trials <= 0.98


@pytest.mark.parametrize(
    ("parse_argv", "argv", "message"),
    [
        (parse_args, ["--attempts", "0"], "must be 1 or more, not 0"),
        (parse_args, ["--runs", "-2"], "must be 1 or more, not -2"),
        (parse_args, ["--max-steal", "5"], "must be a share from 0 to 1, not 5.0"),
        (parse_args, ["--seconds", "ten"], "must be a whole number, not 'ten'"),
        (parse_args, ["--max-steal", "some"], "must be a number, not 'some'"),
        (write_cost.parse_args, ["--runs", "0"], "must be 1 or more, not 0"),
        (write_cost.parse_args, ["--clients", "-1"], "must be 1 or more, not -1"),
        (write_cost.parse_args, ["--seconds", "five"], "must be a whole number, not 'five'"),
    ],
)
def test_the_database_benches_refuse_counts_they_cannot_run(
    parse_argv: Callable[[list[str]], object],
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A count that would leave a round without runs is refused at once, naming the
    option, not after the database is built (``bench.optimizer``, ``bench.write_cost``)."""
    with pytest.raises(SystemExit) as exited:
        parse_argv(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err
    assert message in err


PERF_REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
    40.00%           800  postgres  [.] _bt_compare
    25.00%           500  swapper   [k] pv_native_safe_halt
    20.00%           400  postgres  [k] _raw_spin_unlock_irqrestore
     5.00%           100  postgres  [.] 0x0000000000446bf2
     5.00%           100  kworker/0:1  [k] worker_thread
     5.00%           100  swapper   [k] cpuidle_idle_call

"""


def test_perf_report_lines_are_read_by_function() -> None:
    """perf's sample counts, by command and function; the idle task's as idle time,
    which per transaction is not busy time."""
    samples = core_profile.parse_report(PERF_REPORT)
    assert samples == {
        "postgres [.] _bt_compare": 800,
        core_profile.IDLE: 600,
        "postgres [k] _raw_spin_unlock_irqrestore": 400,
        "postgres [.] 0x0000000000446bf2": 100,
        "kworker/0:1 [k] worker_thread": 100,
    }
    profile = core_profile.Profile()
    profile.add(samples, 500)
    profile.add(samples, 500)
    each = 1e6 / core_profile.FREQUENCY / 1000  # µs per sample per transaction
    assert profile.per_transaction()["postgres [.] _bt_compare"] == pytest.approx(1600 * each)
    assert profile.busy() == pytest.approx(2800 * each)
    assert core_profile.Profile().per_transaction() == {}


SPIN = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\n"


@pytest.mark.tools
def test_perf_samples_what_runs_on_the_core(tmp_path: Path) -> None:
    """A process spinning on one core fills most of that core's samples, under its own
    command name; sampling another core does not see it."""
    assert core_profile.available() is None
    cores = sorted(os.sched_getaffinity(0))
    busy = cores[-1]
    into = tmp_path / "perf.data"

    def spinning_samples(sampled: int) -> int:
        with core_profile.sampling(sampled, into):
            subprocess.run(["taskset", "-c", str(busy), sys.executable, "-c", SPIN], check=True)
        samples = core_profile.read(into)
        return sum(count for name, count in samples.items() if name.startswith("python"))

    on_its_core = spinning_samples(busy)
    assert on_its_core > 0.6 * 1.5 * core_profile.FREQUENCY
    if len(cores) > 1:
        assert spinning_samples(cores[0]) < 0.1 * on_its_core


@pytest.mark.tools
def test_perf_without_perf_installed_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no perf on PATH (taskset still there, so the cores can be pinned), --perf
    stops at once, naming the package to install, and leaves no output behind."""
    tools = tmp_path / "bin"
    tools.mkdir()
    taskset = shutil.which("taskset")
    assert taskset is not None
    (tools / "taskset").symlink_to(taskset)
    monkeypatch.setenv("PATH", str(tools))
    output = tmp_path / "optimizer.md"
    with pytest.raises(SystemExit) as exited:
        optimizer_main(["--perf", "--output", str(output)])
    message = str(exited.value.code)
    if (os.cpu_count() or 1) >= 2:
        assert "perf is not installed (Debian: linux-perf)" in message
    else:
        assert "needs two cores" in message
    assert not output.exists()


def test_steal_is_read_per_core_from_the_kernel() -> None:
    """The ticks of one core are part of those of all, steal among them, and they
    advance while the machine runs."""
    steal_one, total_one = steal_and_total({0})
    steal_all, total_all = steal_and_total()
    assert 0 <= steal_one <= total_one
    assert steal_one <= steal_all <= total_all
    assert total_one < total_all or os.cpu_count() == 1
    time.sleep(0.1)
    assert steal_and_total()[1] > total_all


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.tools
def test_smoke_run_prints_every_scenario_and_goal(tmp_path: Path) -> None:
    output = tmp_path / "bench.md"
    completed = run_bench("bench", "--smoke", "--output", str(output), timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = output.read_text()
    assert report.strip() == completed.stdout.strip()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.splitlines()}
    keys = set(scenarios())
    for scenario in scenarios().values():
        row = rows[
            scenario.title
            if scenario.key != "saturation"
            else "GET, cache disabled, 128 connections"
        ]
        if scenario.built:
            rate = row.split(" | ")[1].replace(",", "")
            assert float(rate) > 0, row
            cpu = row.split(" | ")[5].replace(",", "")  # server CPU µs per response
            assert float(cpu) > 0, row
            database = float(row.split(" | ")[6].replace(",", ""))  # PostgreSQL's, the same
            assert database > 0 if "put" in scenario.key else database >= 0, row
            status = 304 if scenario.key == "hot_304" else 200
            assert re.search(rf"{status}: [\d,]+", row), row
            if scenario.reference is not None and scenarios()[scenario.reference].built:
                assert f" of {scenario.reference} |" in row, row
        else:
            assert f"| {NOT_BUILT} |" in row, row
    for reference in ("asgi", "bare", "raw", "raw_list", "raw_put", "hot_identity"):
        assert reference in keys, reference
    assert "inline" not in report
    goals = [line for line in report.splitlines() if line.startswith("| L1 hit, identity")]
    assert len(goals) == 3, goals
    assert "≥ 2x cashews" in goals[2]
    if not scenarios()["cashews"].built:
        assert f"| {NOT_BUILT}: cashews is not installed" in goals[2], goals[2]
    assert "p99 ≤ 2x" in report
    assert "at the configured levels (zstd " in report
    assert "→ 1 database query" in report
    assert "0 responses other than 200 and 503" in report


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.tools
def test_listing_bench_applies_the_recommendation_and_measures_both_sides() -> None:
    completed = run_bench("bench.listing", "--runs", "1", "--seconds", "1", timeout=180)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "the report recommended `VACUUM (ANALYZE) public.results;`" in completed.stdout
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| first page")]
    before, after = (float(cell.split()[0].replace(",", "")) for cell in rows[0].split(" | ")[1:3])
    assert before > 0
    assert after > 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
def test_write_cost_bench_sets_what_an_index_costs_beside_the_model(tmp_path: Path) -> None:
    """One short round of each case: a measured ratio for each, and the model's, which
    for the inserts follows from the statement's shape alone."""
    output = tmp_path / "write_cost.md"
    completed = run_bench(
        "bench.write_cost", "--runs", "1", "--seconds", "1", "--output", str(output)
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr[-4000:]
    assert output.read_text() == completed.stdout.rstrip("\n") + "\n"
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ")][1:]
    cells = {row.split(" | ")[0].removeprefix("| "): row.split(" | ") for row in rows}
    assert [case.name for case in write_cost.CASES] == list(cells), rows
    for row in cells.values():
        assert float(row[3]) > 0, row  # measured
        assert float(row[4]) >= 1, row  # the model never has an index cost nothing
    inserts = [case for case in write_cost.CASES if case.sets is None]
    assert len(inserts) == 4
    for case in inserts:  # on a table whose key takes ids in order
        per_call = case.rows_per_call
        entry = ORDERED_PART if case.ordered else 1
        own = STATEMENT_PARTS + per_call * (HEAP_PART + ORDERED_PART)
        modelled = 1 + per_call * entry / own
        assert cells[case.name][2] == "", case  # no HOT share: not an update
        assert float(cells[case.name][4]) == round(modelled, 2), case


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
def test_optimizer_bench_applies_the_report_and_measures_both_sides(tmp_path: Path) -> None:
    """One short run of each script on each side, alone and all at once: the statements
    applied are listed, and every script has figures on both sides in both tables."""
    output = tmp_path / "optimizer.md"
    completed = run_bench(
        "bench.optimizer",
        *("--runs", "1", "--seconds", "1", "--attempts", "1", "--perf"),
        *("--output", str(output)),
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr[-4000:]
    assert output.read_text() == completed.stdout.rstrip("\n") + "\n"
    assert "- `CREATE INDEX CONCURRENTLY ON public.orders (customer_id);`" in completed.stdout
    # A second of the clicks scan is some 16 calls: the warm-up ran it on until the
    # report could call it slow, and the report then found its index.
    assert "- `CREATE INDEX CONCURRENTLY ON public.events (customer_id, kind);`" in (
        completed.stdout
    )
    # The applied list, tps together, tps alone, perf.
    tables = completed.stdout.split("\n\n| script")
    assert len(tables) == 4, completed.stdout
    assert tables[0].endswith("The workload, every script at the same time:")
    assert tables[1].endswith("Each script alone:")
    for table in tables[1:3]:
        rows = [line for line in table.splitlines() if line.startswith("| ")]
        assert [row.split(" | ")[0] for row in rows] == [f"| {name}" for name in SCRIPTS]
        for row in rows:
            before, after = (float(cell.replace(",", "")) for cell in row.split(" | ")[1:4:2])
            assert before > 0, row
            assert after > 0, row
            cells = row.rstrip(" |").split(" | ")
            low, high = (float(end) for end in cells[6].split("-"))
            assert low == high == float(cells[5]), row  # one round: its ratio, both ends
    profiled = [line for line in tables[3].splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in profiled] == [f"| {name}" for name in SCRIPTS]
    for row in profiled:
        cells = row.rstrip(" |").split(" | ")
        assert float(cells[1].replace(",", "")) > 0, row  # busy µs per transaction
        assert float(cells[2].replace(",", "")) > 0, row
        assert cells[4].count("`") >= 2, row  # the functions that differ most


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
async def test_callgrind_counts_what_an_index_adds_to_an_insert() -> None:
    """The single-user counts see the work of one more index on an insert, and two runs
    of the same statements on the same data count the same, within what the backend's
    timed work adds (``bench.single_user`` says why; 400 executions spread it thin). A
    smaller simulated last-level cache leaves the instructions of a scan alone and
    multiplies its misses."""
    async with private_postgres() as cluster:
        conn = await asyncpg.connect(cluster.dsn)
        try:
            for database in ("plain", "indexed"):
                await conn.execute(f"CREATE DATABASE {database}")
        finally:
            await conn.close()
        for database in ("plain", "indexed"):
            conn = await asyncpg.connect(cluster.dsn.rsplit("/", 1)[0] + f"/{database}")
            try:
                await conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, k integer)")
                await conn.execute(
                    "INSERT INTO t (k) SELECT i % 997 FROM generate_series(1, 20000) AS i"
                )
                if database == "indexed":
                    await conn.execute("CREATE INDEX ON t (k)")
            finally:
                await conn.close()
        await cluster.stop()

        async def insert(database: str) -> single_user.Cost:
            return await single_user.cost(
                cluster.bin / "postgres",
                cluster.data,
                database,
                cluster.settings,
                "INSERT INTO t (k) VALUES (:k);",
                "k",
                100_000,
                400,
                ("t",),
            )

        plain, indexed = await insert("plain"), await insert("indexed")
        again = await insert("plain")

        async def scan(last_level: str | None) -> single_user.Cost:
            return await single_user.cost(
                cluster.bin / "postgres",
                cluster.data,
                "plain",
                cluster.settings,
                "SELECT count(*) FROM t WHERE k <> :k;",
                "k",
                997,
                4,
                ("t",),
                last_level=last_level,
            )

        whole, small = await scan(None), await scan("131072,8,64")
    assert small.instructions == pytest.approx(whole.instructions, rel=0.005)
    assert small.ll_misses > 3 * max(whole.ll_misses, 1.0), (whole, small)
    assert again.instructions == pytest.approx(plain.instructions, rel=0.005)
    assert again.ll_misses == pytest.approx(plain.ll_misses, rel=0.1, abs=1)
    assert indexed.instructions > plain.instructions * 1.05, (plain, indexed)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.tools
async def test_callgrind_count_of_a_failing_statement_raises_with_the_server_message() -> None:
    """A statement the server refuses is not counted as cheap: the run raises, with the
    server's error in the message."""
    async with private_postgres() as cluster:
        await cluster.stop()
        with pytest.raises(RuntimeError, match="does not exist"):
            await single_user.cost(
                cluster.bin / "postgres",
                cluster.data,
                "postgres",
                cluster.settings,
                "INSERT INTO missing (k) VALUES (:k);",
                "k",
                10,
                3,
            )
