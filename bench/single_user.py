"""What one execution of a statement costs a PostgreSQL backend, counted by callgrind.

A throughput ratio moves with everything else the machine does (on a shared virtual
machine, rounds of the same insert on the same database spread by a third). Counts of
executed instructions and of last-level cache misses do not: callgrind simulates the
processor, so the same binary, data and statements give the same counts on any load.
They measure the work and the memory traffic of the statement itself, not what
concurrency adds (lock waits, context switches, cache lines stolen by other backends).
The simulated last-level cache takes the geometry of this machine's (valgrind reads it
from the processor), all of it for the one backend: a shared one misses more.

The backend is PostgreSQL's single-user mode (``postgres --single``) on a copy of a
stopped cluster's data directory, fed a ``PREPARE`` and ``EXECUTE`` lines; the cost of
one execution is the difference between a run of ``1 + n`` executions and a run of one,
divided by ``n``, so start-up, catalog loading and the first plan cancel out.

The counts are not exact to the instruction: some of a backend's work runs on a timer
(between commands it flushes its activity statistics, at most once a second), so how
much of it a run does follows how long the run takes. One count of 40 inserts once read
0.5% above its twin; spread over ten times as many executions, the same extra work
moves a count a tenth as much.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.private_postgres import OS_USER

SUMMARY = re.compile(r"==\d+== (I\s+refs|LL misses):\s+([\d,]+)")
"""The two totals of valgrind's summary that :class:`Cost` keeps."""

SETTINGS = ("fsync=off", "full_page_writes=off")
"""No full-page images: the first change of a page after a checkpoint copies the whole
page into the WAL and checksums it, and a count of a few thousand executions touches
most pages of an index on random keys for the first time. Those copies made most of
the cache misses such a count saw, at a rate per execution many times that of a
workload running between checkpoints minutes apart."""


@dataclass(frozen=True, slots=True)
class Cost:
    """Per execution: instructions, and misses of the simulated last-level cache."""

    instructions: float
    ll_misses: float


def statements(
    statement: str,
    variable: str,
    high: int,
    executions: int,
    seed: int,
    tables: Sequence[str] = (),
) -> str:
    """``statement`` prepared with ``:variable`` as its one parameter, then executed
    ``executions`` times with values drawn uniformly from 1..``high`` (as pgbench's
    ``random(1, high)``), one command per line as single-user mode reads them.

    First, ``tables`` and their indexes are read into shared buffers (pg_prewarm), as a
    running workload keeps them: a backend that starts cold reads each page it touches
    from the kernel, and the copy's cache misses would swamp those of the statement."""
    draw = random.Random(seed)
    body = " ".join(statement.split()).rstrip(";").replace(f":{variable}", "$1")
    lines = []
    if tables:
        names = ", ".join(_literal(table) for table in tables)
        lines += [
            "CREATE EXTENSION IF NOT EXISTS pg_prewarm;",
            f"WITH t AS (SELECT to_regclass(name) AS oid FROM unnest(ARRAY[{names}]) AS name)"
            " SELECT count(pg_prewarm(r.oid)) FROM (SELECT oid FROM t UNION ALL"
            " SELECT i.indexrelid FROM pg_index AS i JOIN t ON i.indrelid = t.oid) AS r;",
        ]
    lines.append(f"PREPARE measured AS {body};")  # parameter types inferred, as pgbench's
    lines += [f"EXECUTE measured({draw.randint(1, high)});" for _ in range(executions)]
    return "\n".join(lines) + "\n"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _counts(
    postgres: Path,
    data: Path,
    database: str,
    settings: tuple[str, ...],
    script: str,
    last_level: str | None = None,
) -> tuple[int, int]:
    """Instructions and LL misses of one single-user backend running ``script`` on a
    copy of ``data`` (the copy keeps the original as it was for the next run)."""
    with tempfile.TemporaryDirectory(prefix="svc-callgrind-") as tmp:
        root = Path(tmp)
        copy = root / "data"
        argv_prefix = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        process = await asyncio.create_subprocess_exec("cp", "-a", str(data), str(copy))
        if await process.wait() != 0:
            raise RuntimeError(f"could not copy {data}")
        if os.geteuid() == 0:
            shutil.chown(root, OS_USER, OS_USER)
        options = [arg for setting in (*settings, *SETTINGS) for arg in ("-c", setting)]
        process = await asyncio.create_subprocess_exec(
            *argv_prefix,
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            *([f"--LL={last_level}"] if last_level else []),
            f"--callgrind-out-file={root / 'callgrind.out'}",
            str(postgres),
            "--single",
            "-D",
            str(copy),
            *options,
            database,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await process.communicate(script.encode())
        finally:
            if process.returncode is None:  # cancelled: the other run of the pair failed
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
    summary = err.decode(errors="replace")
    output = out.decode(errors="replace") + summary
    found = {name.split()[0]: count for name, count in SUMMARY.findall(summary)}
    if process.returncode != 0 or len(found) != 2 or "ERROR:" in output:
        raise RuntimeError(f"single-user run on {database} failed:\n{output[-2000:]}")
    return int(found["I"].replace(",", "")), int(found["LL"].replace(",", ""))


async def cost(
    postgres: Path,
    data: Path,
    database: str,
    settings: tuple[str, ...],
    statement: str,
    variable: str,
    high: int,
    executions: int,
    tables: Sequence[str] = (),
    seed: int = 7,
    last_level: str | None = None,
) -> Cost:
    """The cost of one execution of ``statement`` in ``database`` of the stopped
    cluster at ``data``, over ``executions`` executions after a first one, with
    ``tables`` and their indexes in shared buffers. ``last_level``: the simulated
    last-level cache as valgrind's ``--LL`` takes it (``size,associativity,line``), in
    place of the processor's own; on a virtual machine that is an L3 shared with other
    guests, larger than what one backend can count on."""
    warm = statements(statement, variable, high, 1, seed, tables)
    full = statements(statement, variable, high, 1 + executions, seed, tables)
    try:
        async with asyncio.TaskGroup() as group:  # one run failing ends the other
            base_run, total_run = (
                group.create_task(_counts(postgres, data, database, settings, run, last_level))
                for run in (warm, full)
            )
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    base, total = base_run.result(), total_run.result()
    return Cost(
        (total[0] - base[0]) / executions,
        (total[1] - base[1]) / executions,
    )
