"""Reading a JSON request body without ever holding more than the limit.

The limit is checked against Content-Length before anything is read, and again while
the body streams in, so a 1 GiB upload costs at most ``limit`` bytes of memory.
"""

from __future__ import annotations

from starlette.requests import Request

from service.api.responses import Problem


def require_json(request: Request) -> None:
    """Refuse (415) a body that is not declared as JSON (``application/json`` or ``+json``)."""
    declared = request.headers.get("content-type", "")
    media_type = declared.partition(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise Problem(
            415,
            f"the body must be application/json, not {media_type or 'unlabelled'}",
            slug="unsupported-media-type",
            headers={"Accept-Put": "application/json"},
        )


async def read_limited(request: Request, limit: int, setting: str = "MAX_RESULT_BYTES") -> bytes:
    """The whole body, or a 413 problem as soon as it is known to exceed ``limit``.

    ``setting`` names where the limit comes from, for the problem's detail.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "Content-Length is not a number", slug="bad-request")
        if int(declared) > limit:
            raise _too_large(limit, setting)
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise _too_large(limit, setting)
    return bytes(received)


def _too_large(limit: int, setting: str) -> Problem:
    # Connection: close, so the server stops reading the rest of the upload.
    return Problem(
        413,
        f"the body exceeds the limit of {limit} bytes ({setting})",
        slug="payload-too-large",
        headers={"Connection": "close"},
        limit=limit,
    )
