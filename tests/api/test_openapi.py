"""/openapi.json describes exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.routing import Route

from service.api.openapi import DOCUMENT
from service.app import create_app
from service.config import Settings

OPERATIONS = {"get", "head", "put", "post", "delete", "patch", "options", "trace"}


def test_every_route_is_described_and_nothing_else() -> None:
    app = create_app(Settings(database_url="sqlite:///unused.sqlite3"))
    served: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path.replace(":path}", "}")
        # Starlette answers HEAD wherever it answers GET, and so does the document.
        served[path] = {m.lower() for m in route.methods or ()}
    described = {path: set(item) & OPERATIONS for path, item in DOCUMENT["paths"].items()}
    assert described == served
    assert all("head" in methods for methods in described.values() if "get" in methods)


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in OPERATIONS
    ]


def test_every_error_is_a_problem_and_every_operation_has_an_id() -> None:
    ids = [operation["operationId"] for _, _, operation in _operations()]
    assert len(ids) == len(set(ids))
    problem = {"$ref": "#/components/schemas/Problem"}
    for name, response in DOCUMENT["components"]["responses"].items():
        assert response["content"] == {"application/problem+json": {"schema": problem}}, name
    for path, method, operation in _operations():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert set(response) == {"$ref"}, (path, method, status)


def test_what_every_body_taking_operation_may_answer() -> None:
    for path, method, operation in _operations():
        statuses = set(operation["responses"])
        if "requestBody" in operation:
            # malformed, timed out, too large, not JSON, invalid, unavailable
            assert {"400", "408", "413", "415", "422", "503"} <= statuses, (path, method)
        if "security" in operation:
            assert {"401", "403", "404"} <= statuses, (path, method)
    unavailable = DOCUMENT["components"]["responses"]["Unavailable"]
    assert unavailable["headers"]["Retry-After"]["required"] is True
    item = DOCUMENT["paths"]["/results/{analysis_id}"]
    assert {"304", "404"} <= set(item["get"]["responses"]) == set(item["head"]["responses"])
    assert {"400", "412"} <= set(item["put"]["responses"]) & set(item["delete"]["responses"])
    tables = DOCUMENT["paths"]["/admin/db/maintenance"]["post"]["requestBody"]["content"]
    assert tables["application/json"]["schema"]["properties"]["tables"]["type"] == [
        "array",
        "null",
    ]


async def test_served_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document == DOCUMENT
