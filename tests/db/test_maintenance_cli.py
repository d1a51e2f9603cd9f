"""``service db report`` and ``service db maintain``: the real command line on a real
PostgreSQL server, its output, and its exit codes.
"""

from __future__ import annotations

import asyncio
import json

from tests.helpers import Database, advisory_lock_held, wait_for_stat
from tests.support.server import run_cli


async def test_cli_db_report_prints_a_table_or_json(shared_db: Database) -> None:
    """``service db report`` prints the readable table, ``--json`` the report as JSON."""
    env = {"DATABASE_URL": shared_db.url}
    (status, out, err), (json_status, json_out, json_err) = await asyncio.gather(
        run_cli("db", "report", env=env), run_cli("db", "report", "--json", env=env)
    )
    assert status == 0, err
    assert "Unused indexes" in out
    assert f"database {shared_db.name} (postgresql" in out
    assert json_status == 0, json_err
    report = json.loads(json_out)
    assert report["database"] == shared_db.name
    assert "unused_indexes" in {check["name"] for check in report["checks"]}


async def test_cli_db_maintain_vacuums_the_named_table(migrated_db: Database) -> None:
    """``service db maintain --vacuum --table results`` exits 0, prints the statement,
    and PostgreSQL records the vacuum."""
    status, out, err = await run_cli(
        "db", "maintain", "--vacuum", "--table", "results", env={"DATABASE_URL": migrated_db.url}
    )
    assert status == 0, err
    assert "VACUUM (ANALYZE) public.results" in out
    assert out.splitlines()[0].startswith("done")
    assert out.splitlines()[-1].startswith("vacuum: 1 statements in ")
    await wait_for_stat(migrated_db, "public.results", "last_vacuum")


async def test_cli_db_maintain_failures_exit_1_with_the_reason(shared_db: Database) -> None:
    """An unknown table, or another caller holding the lock, is exit 1 with a one-line
    message on stderr and no traceback."""
    env = {"DATABASE_URL": shared_db.url}
    status, out, err = await run_cli("db", "maintain", "--analyze", "--table", "nope", env=env)
    assert status == 1, (out, err)
    assert out == ""
    assert "not a table" in err
    assert "Traceback" not in err

    async with advisory_lock_held(shared_db):
        status, out, err = await run_cli("db", "maintain", "--analyze", env=env)
    assert status == 1, (out, err)
    assert "already running" in err
    assert "Traceback" not in err


async def test_cli_db_maintain_needs_analyze_or_vacuum(shared_db: Database) -> None:
    """``service db maintain`` without --analyze or --vacuum is a usage error: exit 2."""
    status, out, err = await run_cli("db", "maintain", env={"DATABASE_URL": shared_db.url})
    assert status == 2, (out, err)
    assert "one of the arguments --analyze --vacuum is required" in err
