"""The results routes: ``/results/{analysis_id}`` and the keyset-paginated ``/results``."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.body import read_limited, require_json
from service.api.conditions import parse_if_match, parse_if_none_match_for_write
from service.api.reads import READ_MADE, ReadRequest, answer
from service.api.responses import Problem, RawResponse, quoted
from service.api.state import state_of
from service.api.writes import WRITE_MADE, write
from service.cache.ready import ReadyResult
from service.core.validators import bounded_decimal
from service.model import MAX_PAGE_SIZE, StoredResult, validate_analysis_id

DEFAULT_PAGE_SIZE = 100


async def result_item(request: Request) -> Response:
    """GET, HEAD, PUT and DELETE on one result."""
    analysis_id = validate_analysis_id(request.path_params["analysis_id"])
    method = request.method
    if method in ("GET", "HEAD"):
        return await _read(request, analysis_id)
    if method == "PUT":
        return await _write(request, analysis_id)
    return await _delete(request, analysis_id)


async def _read(request: Request, analysis_id: str) -> Response:
    state = state_of(request)
    made = request.scope.pop(READ_MADE, None)  # the hit path read it already
    if isinstance(made, Exception):
        raise made
    read = made or await state["result_cache"].get(analysis_id)
    stored = read.found
    if not isinstance(stored, StoredResult):
        raise Problem(
            404,
            f"no result with analysis_id {quoted(analysis_id)}",
            slug="result-not-found",
            headers=state["read_headers"].cache_status(read.source),
        )
    settings = state["settings"]
    # Without L1 the representation is made for this response alone.
    ready = read.ready or ReadyResult(stored)
    conditions = ReadRequest(request.scope["headers"])
    coding = conditions.coding(settings.compression_encodings)
    level = settings.compression_levels.get(coding, 0)
    representation = await ready.make(coding, level, settings.compression_min_size)
    status, headers, body = answer(
        ready,
        representation,
        conditions,
        head=request.method == "HEAD",
        tail=state["read_headers"].tails[read.source],
        stats=state["compression"],
    )
    return RawResponse(status, headers, body)


async def _write(request: Request, analysis_id: str) -> Response:
    if_match = parse_if_match(request.headers.get("if-match"))
    create_only = parse_if_none_match_for_write(request.headers.get("if-none-match"))
    require_json(request)
    made = request.scope.pop(WRITE_MADE, None)  # the write path wrote it already
    if made is None:
        state = state_of(request)
        body = await read_limited(request, state["settings"].max_result_bytes)
        made = await write(
            state["result_cache"], analysis_id, body, if_match=if_match, create_only=create_only
        )
    if isinstance(made, Exception):
        raise made
    return RawResponse(*made)


async def _delete(request: Request, analysis_id: str) -> Response:
    if_match = parse_if_match(request.headers.get("if-match"))
    await state_of(request)["result_cache"].delete(analysis_id, if_match=if_match)
    return Response(status_code=204)


async def result_list(request: Request) -> Response:
    """One page of results in ``analysis_id`` order: ``?limit=1..1000&after=<id>``."""
    raw_limit = request.query_params.get("limit")
    limit = DEFAULT_PAGE_SIZE
    if raw_limit is not None:
        # Bounded before int(): 5,000 digits are a 422 like "0", not a ValueError (500).
        parsed = bounded_decimal(raw_limit, MAX_PAGE_SIZE)
        if parsed is None or parsed < 1:
            raise Problem(
                422,
                f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}",
                slug="invalid-parameter",
            )
        limit = parsed
    after = request.query_params.get("after")
    state = state_of(request)
    page = await state["store"].list_json(limit=limit, after=after)
    return Response(
        page,
        media_type="application/json",
        headers={"Cache-Control": state["read_headers"].cache_control},
    )


class _WholePathRoute(Route):
    """A Route whose ``{...:path}`` parameter takes every character, newlines included.

    Starlette's path convertor is ``.*``, and ``.`` stops at a newline: ``/results/a%0Ab``
    matched no route and was a 404, where any other invalid id is a 422. Matching with
    DOTALL sends it to the id check like the rest.
    """

    def __init__(self, path: str, endpoint: Any, **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)


routes = [
    Route("/results", result_list, methods=["GET"]),
    # The path convertor takes the rest of the path, slashes and control characters
    # included, so "/results/a/b", "/results/a%0Ab" and "/results/" reach the id check
    # and get 422 rather than a confusing 404.
    _WholePathRoute("/results/{analysis_id:path}", result_item, methods=["GET", "PUT", "DELETE"]),
]
