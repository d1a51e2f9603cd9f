"""The OpenAPI 3.1 description of the HTTP contract, served at ``/openapi.json``.

Written out by hand rather than generated: the contract is small, and a test checks
that every route of the app is described here and nothing else. Every status an
operation can answer is listed, with its media type, so schemathesis can hold the
service to it (tests/service/test_schemathesis.py): errors are ``application/problem+json``,
503s carry ``Retry-After``, and every GET also answers HEAD, with the same headers.
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service._version import __version__
from service.api.responses import PROBLEM_MEDIA_TYPE, JSONResponse
from service.model import MAX_PAGE_SIZE

Schema = dict[str, Any]

_ID: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9._-]{1,128}$",
    "not": {"enum": [".", ".."]},
    "description": "1 to 128 characters of A-Z a-z 0-9 . _ -, other than . and ..",
}
_NAMESPACE: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
_ENTITY_TAG = '(W/)?"[!#-+\\--~]*"'
"""RFC 9110 section 8.8.3: an optionally weak, quoted opaque tag; ASCII and no commas here
(the service reads If-Match as a comma-separated list, and issues no tag with a comma)."""
_STATS: Schema = {"type": "object", "additionalProperties": {"type": "number"}}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: Schema) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _header(schema: Schema, description: str, *, required: bool = False) -> dict[str, Any]:
    header: dict[str, Any] = {"description": description, "schema": schema}
    if required:
        header["required"] = True
    return header


# The problems an operation may answer, by status; components/responses hold each one.
_PROBLEM_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "RequestTimeout",
    409: "Conflict",
    412: "PreconditionFailed",
    413: "ContentTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableContent",
    503: "Unavailable",
}


def _problems(*statuses: int, post: bool = False) -> dict[str, Any]:
    """The problem responses of an operation (``post``: its 415 names Accept-Post)."""
    names = {**_PROBLEM_RESPONSES, 415: "UnsupportedMediaTypePost"} if post else _PROBLEM_RESPONSES
    return {str(status): _ref("responses", names[status]) for status in statuses}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("schemas", "Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _with_head(path_item: dict[str, Any], operation_id: str, summary: str) -> dict[str, Any]:
    """``path_item`` with a HEAD operation: GET's, without a body (HTTP answers HEAD
    wherever it answers GET, with the same status and headers)."""
    head = copy.deepcopy(path_item["get"])
    head["operationId"] = operation_id
    head["summary"] = summary
    return {**path_item, "head": head}


_ID_PARAM = {"name": "analysis_id", "in": "path", "required": True, "schema": _ID}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "description": "one entity tag, or *: the write happens only if the result's current"
    ' version is that one ("7", or a representation\'s "7-br"), or exists at all (*);'
    " a tag naming no version fails with 412; several tags, or none, are refused with 400",
    "schema": {"type": "string", "pattern": f"^(\\*|{_ENTITY_TAG})$"},
}
_VALIDATORS = {
    "ETag": _header(
        {"type": "string", "pattern": '^"[0-9]+(-[a-z0-9]+)?"$'},
        'the version, quoted: "7"; a compressed representation adds its coding: "7-br"',
        required=True,
    ),
}
_READ_HEADERS = {
    **_VALIDATORS,
    "Last-Modified": _header(
        {"type": "string"},
        "when the version was written; left out during the second it was written in",
    ),
    "Cache-Control": _header(
        {"type": "string"},
        "no-cache unless HTTP_MAX_AGE and its kin are set",
        required=True,
    ),
    "Cache-Status": _header(
        {"type": "string"}, "RFC 9211: which tier of the service answered", required=True
    ),
    "X-Cache": _header(
        {"enum": ["HIT", "MISS", "STALE"]}, "whether a cache tier answered", required=True
    ),
}
_WRITTEN_HEADERS = {
    **_VALIDATORS,
    "Location": _header({"type": "string"}, "on 201: the created result's path"),
}
_RESULT_LINKS = {
    "GetResult": {
        "operationId": "getResult",
        "parameters": {"path.analysis_id": "$request.path.analysis_id"},
        "description": "read what was written",
    },
    "RevalidateResult": {
        "operationId": "getResult",
        "parameters": {
            "path.analysis_id": "$request.path.analysis_id",
            "header.If-None-Match": "$response.header.ETag",
        },
        "description": "revalidate what was written: 304",
    },
    "HeadResult": {
        "operationId": "headResult",
        "parameters": {"path.analysis_id": "$request.path.analysis_id"},
        "description": "the headers of what was written",
    },
    "ReplaceResult": {
        "operationId": "putResult",
        "parameters": {
            "path.analysis_id": "$request.path.analysis_id",
            "header.If-Match": "$response.header.ETag",
        },
        "description": "replace the version that was written, and only that one",
    },
    "DeleteResult": {
        "operationId": "deleteResult",
        "parameters": {
            "path.analysis_id": "$request.path.analysis_id",
            "header.If-Match": "$response.header.ETag",
        },
        "description": "delete the version that was written",
    },
}
_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_ADMIN_BODY = (
    "a JSON object of at most 4096 bytes; 413 past that, 415 unless declared JSON,"
    " 400 if malformed, 408 when it does not arrive within BODY_TIMEOUT"
)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "service",
        "version": __version__,
        "description": "Store and serve analysis results (JSON objects) by analysis_id."
        " Every error is an RFC 9457 problem (application/problem+json).",
    },
    "paths": {
        "/results/{analysis_id}": _with_head(
            {
                "parameters": [_ID_PARAM],
                "get": {
                    "operationId": "getResult",
                    "summary": "Read a result",
                    "parameters": [
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "description": "entity tags (weak comparison) or *: 304 if one"
                            " names the current representation",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "If-Modified-Since",
                            "in": "header",
                            "description": "an HTTP date: 304 unless modified since"
                            " (ignored with If-None-Match or when not a date)",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the stored object, as it was sent",
                            "headers": _READ_HEADERS,
                            **_json({"type": "object"}),
                        },
                        "304": {"description": "not modified", "headers": _READ_HEADERS},
                        **_problems(404, 422, 503),
                    },
                },
                "put": {
                    "operationId": "putResult",
                    "summary": "Create or replace a result",
                    "parameters": [
                        _IF_MATCH,
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "description": "*: create only, 412 if the result exists;"
                            " any other value is refused with 400",
                            "schema": {"const": "*"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "description": "a JSON object (application/json or any +json type) of"
                        " at most MAX_RESULT_BYTES; stored as sent. On PostgreSQL a string"
                        " holding \\u0000, or nesting deeper than JSONB takes, is refused"
                        " with 422",
                        **_json({"type": "object"}),
                    },
                    "responses": {
                        "200": {
                            "description": "replaced",
                            "headers": _WRITTEN_HEADERS,
                            **_json(_ref("schemas", "Written")),
                            "links": _RESULT_LINKS,
                        },
                        "201": {
                            "description": "created",
                            "headers": {
                                **_WRITTEN_HEADERS,
                                "Location": {**_WRITTEN_HEADERS["Location"], "required": True},
                            },
                            **_json(_ref("schemas", "Written")),
                            "links": _RESULT_LINKS,
                        },
                        **_problems(400, 408, 412, 413, 415, 422, 503),
                    },
                },
                "delete": {
                    "operationId": "deleteResult",
                    "summary": "Delete a result (its version goes on counting)",
                    "parameters": [_IF_MATCH],
                    "responses": {
                        "204": {"description": "deleted"},
                        **_problems(400, 404, 412, 422, 503),
                    },
                },
            },
            "headResult",
            "Headers of a result",
        ),
        "/results": _with_head(
            {
                "get": {
                    "operationId": "listResults",
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
                        {
                            "name": "after",
                            "in": "query",
                            "description": "the previous page's next",
                            "schema": _ID,
                        },
                    ],
                    "responses": {
                        "200": {"description": "one page", **_json(_ref("schemas", "Page"))},
                        **_problems(422, 503),
                    },
                },
            },
            "headResults",
            "Headers of a page of results",
        ),
        "/healthz": _with_head(
            {
                "get": {
                    "operationId": "liveness",
                    "summary": "Liveness",
                    "responses": {
                        "200": {
                            "description": "alive",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {"status": {"const": "ok"}},
                                }
                            ),
                        }
                    },
                }
            },
            "headLiveness",
            "Liveness, headers only",
        ),
        "/readyz": _with_head(
            {
                "get": {
                    "operationId": "readiness",
                    "summary": "Readiness (the database answers within 2 s)",
                    "responses": {
                        "200": {
                            "description": "ready",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["status", "checks", "pool"],
                                    "properties": {
                                        "status": {"const": "ready"},
                                        "checks": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "pool": _STATS,
                                    },
                                }
                            ),
                        },
                        **_problems(503),
                    },
                }
            },
            "headReadiness",
            "Readiness, headers only",
        ),
        "/metrics": _with_head(
            {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics, text format (here unless METRICS_PORT is set)",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {
                                "text/plain; version=0.0.4": {"schema": {"type": "string"}}
                            },
                        }
                    },
                }
            },
            "headMetrics",
            "Prometheus metrics, headers only",
        ),
        "/admin/cache/stats": _with_head(
            {
                "get": {
                    "operationId": "cacheStats",
                    "summary": "Cache counters of this process and the shared backend's own report",
                    "security": _ADMIN,
                    "responses": {
                        "200": {
                            "description": "counters",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["cache", "results", "backend"],
                                    "properties": {
                                        "cache": {"type": "object"},
                                        "results": {"type": "object"},
                                        "backend": {"type": "object"},
                                    },
                                }
                            ),
                        },
                        **_problems(401, 403, 404, 503),
                    },
                }
            },
            "headCacheStats",
            "Cache counters, headers only",
        ),
        "/admin/cache/invalidate": {
            "post": {
                "operationId": "invalidateCache",
                "summary": "Drop one analysis_id, or a whole namespace, from every cache tier",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "description": _ADMIN_BODY,
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
                                    "properties": {"namespace": _NAMESPACE},
                                    "additionalProperties": False,
                                },
                            ]
                        }
                    ),
                },
                "responses": {
                    "200": {
                        "description": "how many shared entries were removed, and the order",
                        **_json(
                            {
                                "type": "object",
                                "required": ["invalidated"],
                                "properties": {
                                    "invalidated": {"type": "integer", "minimum": 0},
                                    "analysis_id": _ID,
                                    "namespace": _NAMESPACE,
                                },
                            }
                        ),
                    },
                    **_problems(400, 401, 403, 404, 408, 413, 415, 422, 503, post=True),
                },
            }
        },
        "/admin/db/report": _with_head(
            {
                "get": {
                    "operationId": "databaseReport",
                    "summary": "The query optimizer's report: index, vacuum, wraparound, cache,"
                    " connection, lock, sequence and slow-query checks, each with the DDL to run",
                    "security": _ADMIN,
                    "responses": {
                        "200": {
                            "description": "the report",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["database", "dialect", "checks"],
                                    "properties": {
                                        "database": {"type": "string"},
                                        "dialect": {"enum": ["postgresql", "sqlite"]},
                                        "checks": {"type": "array"},
                                    },
                                }
                            ),
                        },
                        **_problems(401, 403, 404, 503),
                    },
                }
            },
            "headDatabaseReport",
            "The optimizer's report, headers only (the checks still run)",
        ),
        "/admin/db/maintenance": {
            "post": {
                "operationId": "maintainDatabase",
                "summary": "ANALYZE or VACUUM (ANALYZE), one table at a time, one caller at a time",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "description": f"{_ADMIN_BODY}. tables: names of the database's own tables"
                    " (422 for any other, before anything runs); absent or null: all of them",
                    **_json(
                        {
                            "type": "object",
                            "required": ["operation"],
                            "properties": {
                                "operation": {"enum": ["analyze", "vacuum"]},
                                "tables": {
                                    "type": ["array", "null"],
                                    "items": {"type": "string", "minLength": 1},
                                },
                            },
                            "additionalProperties": False,
                        }
                    ),
                },
                "responses": {
                    "200": {
                        "description": "what ran, table by table, with timings",
                        **_json(_ref("schemas", "MaintenanceRun")),
                    },
                    **_problems(400, 401, 403, 404, 408, 409, 413, 415, 422, 503, post=True),
                },
            }
        },
        "/openapi.json": _with_head(
            {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", **_json({"type": "object"})}
                    },
                }
            },
            "headOpenapi",
            "This document, headers only",
        ),
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
                    "version": {"type": "integer", "minimum": 1},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "Meta": {
                "type": "object",
                "required": ["analysis_id", "version", "created_at", "updated_at"],
                "properties": {
                    "analysis_id": _ID,
                    "version": {"type": "integer", "minimum": 1},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "Page": {
                "type": "object",
                "required": ["items", "next"],
                "properties": {
                    "items": {"type": "array", "items": _ref("schemas", "Meta")},
                    "next": {"oneOf": [_ID, {"type": "null"}]},
                },
            },
            "MaintenanceRun": {
                "type": "object",
                "required": ["operation", "started_at", "seconds", "tables"],
                "properties": {
                    "operation": {"enum": ["analyze", "vacuum"]},
                    "started_at": {"type": "string", "format": "date-time"},
                    "seconds": {"type": "number", "minimum": 0},
                    "tables": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["table", "statement", "outcome", "seconds"],
                            "properties": {
                                "table": {"type": "string"},
                                "statement": {"type": "string"},
                                "outcome": {"enum": ["done", "skipped", "timed out"]},
                                "seconds": {"type": "number", "minimum": 0},
                                "detail": {"type": ["string", "null"]},
                            },
                        },
                    },
                },
            },
            "Problem": {
                "description": "RFC 9457 problem details; a problem may add members",
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {
                        "type": "string",
                        "format": "uri-reference",
                        "description": "/problems/<slug>, or about:blank for plain HTTP errors",
                    },
                    "title": {"type": "string", "minLength": 1},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string", "minLength": 1},
                },
            },
        },
        "responses": {
            "BadRequest": _problem(
                "malformed JSON, a Content-Length that is not a number, several entity tags"
                " (or none) in If-Match, or If-None-Match other than * on PUT"
            ),
            "Unauthorized": _problem(
                "no Authorization: Bearer <token>",
                {
                    "WWW-Authenticate": _header(
                        {"type": "string", "pattern": "^Bearer"}, "the scheme", required=True
                    )
                },
            ),
            "Forbidden": _problem("the bearer token is not the admin token"),
            "NotFound": _problem(
                "no such result; for admin endpoints: ADMIN_TOKEN is not set, so they do not exist"
            ),
            "RequestTimeout": _problem(
                "the body did not arrive within BODY_TIMEOUT seconds; the connection is closed"
            ),
            "Conflict": _problem("another caller (here or on another replica) is maintaining"),
            "PreconditionFailed": _problem(
                "If-Match or If-None-Match did not hold; nothing was written"
            ),
            "ContentTooLarge": _problem(
                "the body exceeds the limit (MAX_RESULT_BYTES, or 4096 bytes for admin"
                " bodies), by Content-Length or while streaming; the connection is closed"
            ),
            "UnsupportedMediaType": _problem(
                "the body is not declared application/json (or +json)",
                {
                    "Accept-Put": _header(
                        {"type": "string"}, "the media type to send", required=True
                    )
                },
            ),
            "UnsupportedMediaTypePost": _problem(
                "the body is not declared application/json (or +json)",
                {
                    "Accept-Post": _header(
                        {"type": "string"}, "the media type to send", required=True
                    )
                },
            ),
            "UnprocessableContent": _problem(
                "an invalid analysis_id, parameter or request member; a document that is not"
                " a JSON object, or that the database refuses"
            ),
            "Unavailable": _problem(
                "the database (or, for an invalidation, the cache) is unavailable, or every"
                " pooled connection is busy; not ready, for /readyz; or the server is"
                " shutting down with the request still running",
                {
                    "Retry-After": _header(
                        {"type": "integer", "minimum": 0}, "seconds to wait", required=True
                    )
                },
            ),
        },
    },
}


async def openapi(request: Request) -> Response:
    """The OpenAPI document."""
    return JSONResponse(DOCUMENT)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
