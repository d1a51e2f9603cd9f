"""/openapi.json describes exactly the routes the app serves."""

from __future__ import annotations

import httpx
from starlette.routing import Route

from service.api.openapi import DOCUMENT
from service.app import create_app
from service.config import Settings


def test_every_route_is_described_and_nothing_else() -> None:
    app = create_app(Settings(database_url="sqlite:///unused.sqlite3"))
    served: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path.replace(":path}", "}")
        # Starlette answers HEAD wherever it answers GET; HTTP implies it, so the document
        # spells HEAD out only where it matters (results, for their validators).
        served[path] = {m.lower() for m in route.methods or ()} - {"head"}
    described = {
        path: set(item) - {"parameters", "head"} for path, item in DOCUMENT["paths"].items()
    }
    assert described == served
    assert "head" in DOCUMENT["paths"]["/results/{analysis_id}"]


async def test_served_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document == DOCUMENT
