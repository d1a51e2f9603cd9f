"""Admin endpoints, behind ``Authorization: Bearer ADMIN_TOKEN``.

Without ADMIN_TOKEN they do not exist (404, as for any unknown path), so an operator
who never set a token has nothing to protect. A missing or malformed Authorization
header is 401 with ``WWW-Authenticate: Bearer``; a wrong token is 403. Tokens are
compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.body import read_limited, require_json
from service.api.responses import JSONResponse, Problem
from service.api.state import state_of
from service.cache.result_cache import NAMESPACE
from service.db.optimization import OPERATIONS
from service.errors import CacheUnavailable

Endpoint = Callable[[Request], Awaitable[Response]]
MAX_ADMIN_BODY = 4096


def require_admin(request: Request) -> None:
    """Raise the right problem unless the request carries the admin token."""
    token = state_of(request)["settings"].admin_token
    if not token:
        raise Problem(404, "no such resource")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Problem(
            401,
            "this endpoint needs Authorization: Bearer <ADMIN_TOKEN>",
            slug="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="admin"'},
        )
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise Problem(403, "the bearer token is not the admin token", slug="forbidden")


def admin(endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so it runs only for the admin."""

    async def guarded(request: Request) -> Response:
        require_admin(request)
        return await endpoint(request)

    guarded.__doc__ = endpoint.__doc__
    return guarded


@admin
async def cache_stats(request: Request) -> Response:
    """Counters of this process's cache tiers, and what the shared backend says of itself."""
    results = state_of(request)["result_cache"]
    body: dict[str, Any] = {
        "cache": results.cache.stats().as_dict(),
        "results": results.stats().as_dict(),
    }
    try:
        body["backend"] = await results.cache.backend_info()
    except CacheUnavailable:
        body["backend"] = {"error": "unreachable"}
    return JSONResponse(body)


@admin
async def cache_invalidate(request: Request) -> Response:
    """Drop ``{"analysis_id": ...}`` or a whole ``{"namespace": ...}`` from every tier."""
    results = state_of(request)["result_cache"]
    order = await _json_body(request)
    if (
        not isinstance(order, dict)
        or len(order) != 1
        or not order.keys()
        <= {
            "analysis_id",
            "namespace",
        }
    ):
        raise Problem(
            422,
            'send exactly one of {"analysis_id": "<id>"} or {"namespace": "<namespace>"}',
            slug="invalid-request",
        )
    if "analysis_id" in order:
        removed = await results.invalidate(_text(order["analysis_id"], "analysis_id"))
    elif (namespace := _text(order["namespace"], "namespace")) == NAMESPACE:
        removed = await results.invalidate()
    else:
        removed = await results.cache.invalidate_namespace(namespace)
    return JSONResponse({"invalidated": removed, **order})


@admin
async def db_report(request: Request) -> Response:
    """The optimizer's report of the database, as JSON."""
    report = await state_of(request)["optimizer"].report()
    return JSONResponse(report.as_dict())


@admin
async def db_maintenance(request: Request) -> Response:
    """Run ``{"operation": "analyze" | "vacuum", "tables": [...]}``; answer what ran.

    Without ``tables``, every table of the database. 409 while another caller (here or
    on another replica) is maintaining; 422 for an unknown operation or table, before
    anything runs.
    """
    optimizer = state_of(request)["optimizer"]
    order = await _json_body(request)
    if not isinstance(order, dict) or not order.keys() <= {"operation", "tables"}:
        raise Problem(
            422,
            'send {"operation": "analyze" | "vacuum", "tables": ["name", ...]} (tables optional)',
            slug="invalid-request",
        )
    operation = order.get("operation")
    tables = order.get("tables")
    if operation not in OPERATIONS:
        raise Problem(
            422, f"operation must be one of {', '.join(OPERATIONS)}", slug="invalid-request"
        )
    if tables is not None and (
        not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables)
    ):
        raise Problem(422, "tables must be a list of table names", slug="invalid-request")
    run = await optimizer.maintain(operation, tables)  # 409 / 422 via problem_for
    return JSONResponse(run.as_dict())


async def _json_body(request: Request) -> Any:
    """The request's JSON body: 415 unless JSON, 413 past MAX_ADMIN_BODY, 400 if malformed."""
    require_json(request)
    raw = await read_limited(request, MAX_ADMIN_BODY, "the admin body limit")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"malformed JSON: {exc}", slug="malformed-json") from None


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise Problem(422, f"{name} must be a string", slug="invalid-request")
    return value


routes = [
    Route("/admin/cache/stats", cache_stats, methods=["GET"]),
    Route("/admin/cache/invalidate", cache_invalidate, methods=["POST"]),
    Route("/admin/db/report", db_report, methods=["GET"]),
    Route("/admin/db/maintenance", db_maintenance, methods=["POST"]),
]
