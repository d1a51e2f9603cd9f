"""Maintenance and the database report over HTTP: ``/admin/db/report`` and
``/admin/db/maintenance`` on a real PostgreSQL server (and on SQLite), behind the admin
token; PostgreSQL's own statistics say whether a requested run really ran.
"""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from tests.helpers import (
    HOSTILE,
    ClientFactory,
    Database,
    advisory_lock_held,
    assert_problem,
    stat,
    wait_for_stat,
)

TOKEN = "maintenance-admin-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
REPORT = "/admin/db/report"
MAINTENANCE = "/admin/db/maintenance"


# --- admin endpoints ----------------------------------------------------------------------


async def test_db_admin_routes_do_not_exist_without_a_token(
    make_client: ClientFactory, shared_db: Database
) -> None:
    """Without ADMIN_TOKEN both routes are 404, whatever the request carries."""
    async with make_client(database_url=shared_db.url) as client:
        assert_problem(await client.get(REPORT, headers=AUTH), 404)
        order = {"operation": "analyze"}
        assert_problem(await client.post(MAINTENANCE, headers=AUTH, json=order), 404)


async def test_db_admin_routes_need_the_admin_token(
    make_client: ClientFactory, shared_db: Database
) -> None:
    """No Authorization: 401 with WWW-Authenticate: Bearer; a wrong token: 403."""
    order = {"operation": "analyze"}
    async with make_client(database_url=shared_db.url, admin_token=TOKEN) as client:
        wrong = {"authorization": f"Bearer {TOKEN}x"}
        for response, status in [
            (await client.get(REPORT), 401),
            (await client.post(MAINTENANCE, json=order), 401),
            (await client.get(REPORT, headers=wrong), 403),
            (await client.post(MAINTENANCE, headers=wrong, json=order), 403),
        ]:
            assert_problem(response, status)
            if status == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in response.text


async def test_http_report_is_json_with_checks(
    make_client: ClientFactory, shared_db: Database
) -> None:
    """GET /admin/db/report is the report as JSON: dialect, database, every check."""
    async with make_client(database_url=shared_db.url, admin_token=TOKEN) as client:
        response = await client.get(REPORT, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["dialect"] == "postgresql"
    assert body["database"] == shared_db.name
    names = {check["name"] for check in body["checks"]}
    assert {"unused_indexes", "duplicate_indexes", "invalid_indexes"} <= names


async def test_http_vacuum_of_results_runs_and_answers_the_run(
    make_client: ClientFactory, migrated_db: Database
) -> None:
    """POST {"operation": "vacuum", "tables": ["results"]} is 200 with the run as JSON,
    and PostgreSQL records the vacuum of public.results."""
    order = {"operation": "vacuum", "tables": ["results"]}
    async with make_client(database_url=migrated_db.url, admin_token=TOKEN) as client:
        response = await client.post(MAINTENANCE, headers=AUTH, json=order)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["operation"] == "vacuum"
    assert datetime.fromisoformat(body["started_at"]).tzinfo is not None
    assert body["seconds"] >= 0
    assert len(body["tables"]) == 1
    assert body["tables"][0]["statement"] == "VACUUM (ANALYZE) public.results"
    assert body["tables"][0]["outcome"] == "done"
    await wait_for_stat(migrated_db, "public.results", "last_vacuum")


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"[]", 422),
        (b"{}", 422),
        (b'{"operation": "full"}', 422),
        (b'{"operation": "vacuum", "full": true}', 422),
        (b'{"operation": "vacuum", "tables": "results"}', 422),
        (b'{"operation": "vacuum", "tables": [""]}', 422),
        (b'{"operation": "vacuum", "tables": [5]}', 422),
        (b'{"operation": "vacuum", "tables": ["nope"]}', 422),
    ],
)
async def test_bad_maintenance_orders_are_problems(
    make_client: ClientFactory, shared_db: Database, content: bytes, status: int
) -> None:
    """Malformed JSON is 400, any other order the endpoint cannot run 422."""
    headers = {**AUTH, "content-type": "application/json"}
    async with make_client(database_url=shared_db.url, admin_token=TOKEN) as client:
        response = await client.post(MAINTENANCE, headers=headers, content=content)
    assert_problem(response, status, "malformed-json" if status == 400 else "invalid-request")


async def test_maintenance_needs_a_json_body(
    make_client: ClientFactory, shared_db: Database
) -> None:
    """A body that is not application/json is 415."""
    headers = {**AUTH, "content-type": "text/plain"}
    content = b'{"operation": "analyze"}'
    async with make_client(database_url=shared_db.url, admin_token=TOKEN) as client:
        response = await client.post(MAINTENANCE, headers=headers, content=content)
    assert_problem(response, 415)


async def test_sqlite_analyze_over_http_and_its_report(
    make_client: ClientFactory, sqlite_url: str
) -> None:
    """On the embedded SQLite database: the report says dialect sqlite and "never
    analyzed"; POST analyze runs ANALYZE per table then PRAGMA optimize, after which
    the report no longer says so; a table that does not exist is 422."""
    async with make_client(database_url=sqlite_url, admin_token=TOKEN) as client:
        before = await client.get(REPORT, headers=AUTH)
        order = {"operation": "analyze", "tables": ["results"]}
        response = await client.post(MAINTENANCE, headers=AUTH, json=order)
        after = await client.get(REPORT, headers=AUTH)
        unknown = await client.post(
            MAINTENANCE, headers=AUTH, json={"operation": "analyze", "tables": ["nope"]}
        )

    def details(report: httpx.Response) -> list[str]:
        assert report.status_code == 200, report.text
        body = report.json()
        assert body["dialect"] == "sqlite"
        return [finding["detail"] for check in body["checks"] for finding in check["findings"]]

    assert any("never analyzed" in detail for detail in details(before))
    assert response.status_code == 200, response.text
    assert [(t["statement"], t["outcome"]) for t in response.json()["tables"]] == [
        ('ANALYZE "results"', "done"),
        ("PRAGMA optimize", "done"),
    ]
    assert not any("never analyzed" in detail for detail in details(after))
    assert_problem(unknown, 422, "invalid-request")


# --- what the optimizer refuses, as HTTP answers ------------------------------------------


async def test_http_maintenance_is_409_while_another_caller_maintains(
    make_client: ClientFactory, migrated_db: Database
) -> None:
    """POST /admin/db/maintenance answers 409 maintenance-running while the lock is
    held elsewhere (nothing vacuumed), and 200 once it is released."""
    order = {"operation": "vacuum", "tables": ["results"]}
    async with (
        make_client(database_url=migrated_db.url, admin_token=TOKEN) as client,
        advisory_lock_held(migrated_db) as release,
    ):
        refused = await client.post(MAINTENANCE, headers=AUTH, json=order)
        assert_problem(refused, 409, "maintenance-running")
        assert await stat(migrated_db, "public.results", "last_vacuum") is None
        await release()
        accepted = await client.post(MAINTENANCE, headers=AUTH, json=order)
    assert accepted.status_code == 200, accepted.text
    await wait_for_stat(migrated_db, "public.results", "last_vacuum")


@pytest.mark.parametrize("name", [HOSTILE, "pg_catalog.pg_class"])
async def test_http_refuses_a_hostile_table_name_with_422(
    make_client: ClientFactory, migrated_db: Database, name: str
) -> None:
    """The endpoint answers 422 and the table named inside the hostile string survives."""
    await migrated_db.execute("CREATE TABLE y (id int)")
    order = {"operation": "vacuum", "tables": ["results", name]}
    async with make_client(database_url=migrated_db.url, admin_token=TOKEN) as client:
        response = await client.post(MAINTENANCE, headers=AUTH, json=order)
    body = assert_problem(response, 422, "invalid-request")
    assert "not a table" in body["detail"]
    assert await migrated_db.fetchval("SELECT to_regclass('public.y') IS NOT NULL")
    assert await stat(migrated_db, "public.results", "last_vacuum") is None
