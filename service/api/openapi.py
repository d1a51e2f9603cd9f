"""The OpenAPI 3.1 description of the HTTP contract, served at ``/openapi.json``.

Written out by hand rather than generated: the contract is small, and a test checks
that every route of the app is described here and nothing else.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import __version__
from service.api.responses import JSONResponse
from service.db.results import MAX_PAGE_SIZE

_ID = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}
_PROBLEM = {"$ref": "#/components/responses/Problem"}
_UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(status): _UNAVAILABLE if status == 503 else _PROBLEM for status in statuses}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_ID_PARAM = {"name": "analysis_id", "in": "path", "required": True, "schema": _ID}
_ETAG = {"ETag": {"schema": {"type": "string"}, "description": 'the version, quoted: "7"'}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "service",
        "version": __version__,
        "description": "Store and serve analysis results (JSON objects) by analysis_id.",
    },
    "paths": {
        "/results/{analysis_id}": {
            "parameters": [_ID_PARAM],
            "get": {
                "summary": "Read a result",
                "parameters": [
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                    {"name": "If-Modified-Since", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "the stored object",
                        "headers": _ETAG,
                        **_json({"type": "object"}),
                    },
                    "304": {"description": "not modified"},
                    **_problems(404, 422, 503),
                },
            },
            "head": {
                "summary": "Headers of a result",
                "responses": {
                    "200": {"description": "as GET, without a body"},
                    "304": {"description": "not modified"},
                    **_problems(404, 422, 503),
                },
            },
            "put": {
                "summary": "Create or replace a result",
                "parameters": [
                    {"name": "If-Match", "in": "header", "schema": {"type": "string"}},
                    {"name": "If-None-Match", "in": "header", "schema": {"const": "*"}},
                ],
                "requestBody": {"required": True, **_json({"type": "object"})},
                "responses": {
                    "200": {
                        "description": "replaced",
                        "headers": _ETAG,
                        **_json({"$ref": "#/components/schemas/Written"}),
                    },
                    "201": {
                        "description": "created",
                        "headers": _ETAG,
                        **_json({"$ref": "#/components/schemas/Written"}),
                    },
                    **_problems(400, 412, 413, 415, 422, 503),
                },
            },
            "delete": {
                "summary": "Delete a result",
                "parameters": [{"name": "If-Match", "in": "header", "schema": {"type": "string"}}],
                "responses": {"204": {"description": "deleted"}, **_problems(404, 412, 422, 503)},
            },
        },
        "/results": {
            "get": {
                "summary": "List results in analysis_id order (keyset pagination)",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE_SIZE,
                            "default": 100,
                        },
                    },
                    {"name": "after", "in": "query", "schema": _ID},
                ],
                "responses": {
                    "200": {
                        "description": "one page",
                        **_json({"$ref": "#/components/schemas/Page"}),
                    },
                    **_problems(422, 503),
                },
            },
        },
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness (the database answers)",
                "responses": {"200": {"description": "ready"}, **_problems(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, text format (here unless METRICS_PORT is set)",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/admin/cache/stats": {
            "get": {
                "summary": "Cache counters of this process and the shared backend's own report",
                "security": [{"admin": []}],
                "responses": {"200": {"description": "counters"}, **_problems(401, 403, 404)},
            }
        },
        "/admin/cache/invalidate": {
            "post": {
                "summary": "Drop one analysis_id, or a whole namespace, from every cache tier",
                "security": [{"admin": []}],
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["analysis_id"],
                                    "properties": {"analysis_id": _ID},
                                    "additionalProperties": False,
                                },
                                {
                                    "type": "object",
                                    "required": ["namespace"],
                                    "properties": {"namespace": {"type": "string"}},
                                    "additionalProperties": False,
                                },
                            ]
                        }
                    ),
                },
                "responses": {
                    "200": {"description": "how many shared entries were removed"},
                    **_problems(400, 401, 403, 404, 415, 422, 503),
                },
            }
        },
        "/admin/db/report": {
            "get": {
                "summary": "The query optimizer's report: index, vacuum, wraparound, cache,"
                " connection, lock, sequence and slow-query checks, each with the DDL to run",
                "security": [{"admin": []}],
                "responses": {
                    "200": {"description": "the report"},
                    **_problems(401, 403, 404, 503),
                },
            }
        },
        "/admin/db/maintenance": {
            "post": {
                "summary": "ANALYZE or VACUUM (ANALYZE), one table at a time, one caller at a time",
                "security": [{"admin": []}],
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["operation"],
                            "properties": {
                                "operation": {"enum": ["analyze", "vacuum"]},
                                "tables": {
                                    "type": "array",
                                    "items": {"type": "string", "minLength": 1},
                                },
                            },
                            "additionalProperties": False,
                        }
                    ),
                },
                "responses": {
                    "200": {"description": "what ran, table by table, with timings"},
                    **_problems(400, 401, 403, 404, 409, 415, 422, 503),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    },
    "components": {
        "securitySchemes": {
            "admin": {
                "type": "http",
                "scheme": "bearer",
                "description": "ADMIN_TOKEN; without it the admin endpoints answer 404",
            }
        },
        "schemas": {
            "Written": {
                "type": "object",
                "required": ["analysis_id", "version", "updated_at"],
                "properties": {
                    "analysis_id": _ID,
                    "version": {"type": "integer"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "Meta": {
                "type": "object",
                "properties": {
                    "analysis_id": _ID,
                    "version": {"type": "integer"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "Page": {
                "type": "object",
                "required": ["items", "next"],
                "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Meta"}},
                    "next": {"oneOf": [_ID, {"type": "null"}]},
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
            },
        },
        "responses": {
            "Problem": {
                "description": "RFC 9457 problem details",
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            },
            "Unavailable": {
                "description": "database unavailable or pool exhausted",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            },
        },
    },
}


async def openapi(request: Request) -> Response:
    """The OpenAPI document."""
    return JSONResponse(DOCUMENT)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
