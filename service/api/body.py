"""Reading a JSON request body without ever holding more than the limit, or waiting
longer than BODY_TIMEOUT for it.

The limit is checked against Content-Length before anything is read, and again while
the body streams in, so a 1 GiB upload costs at most ``limit`` bytes of memory. A
client that trickles its body is cut off after ``body_timeout`` seconds in total (408),
so it cannot hold a request, and a connection, for as long as it likes. A client that
goes away mid-body is a 499 (see :func:`service.api.responses.client_closed`): its
fault, not the service's, so never a 5xx nor an ERROR line.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import Receive

from service.api.responses import Problem, client_closed, quoted
from service.core.validators import bounded_decimal


def declares_json(content_type: str) -> bool:
    """Whether a Content-Type value is ``application/json`` or ``application/*+json``."""
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def require_json(request: Request) -> None:
    """Refuse (415) a body that is not declared as JSON (``application/json`` or ``+json``)."""
    declared = request.headers.get("content-type", "")
    if not declares_json(declared):
        media_type = declared.partition(";")[0].strip().lower()
        shown = quoted(media_type) if media_type else "unlabelled"
        raise Problem(
            415,
            f"the body must be application/json, not {shown}",
            slug="unsupported-media-type",
            # Accept-Put on PUT, Accept-Post on POST: the media types this method takes.
            headers={f"Accept-{request.method.title()}": "application/json"},
        )


async def read_limited(request: Request, limit: int, setting: str = "MAX_RESULT_BYTES") -> bytes:
    """The whole body, or a 413 problem as soon as it is known to exceed ``limit``.

    ``setting`` names where the limit comes from, for the problem's detail. The whole
    read may take at most the ``body_timeout`` of the app's settings (when the request
    state has settings): then 408, with ``Connection: close``.
    """
    settings = getattr(request.state, "settings", None)
    timeout: float | None = getattr(settings, "body_timeout", None)
    declared = request.headers.get("content-length")
    return await read_body(request.receive, declared, limit, timeout, setting)


async def read_body(
    receive: Receive,
    declared: str | None,
    limit: int,
    seconds: float | None,
    setting: str = "MAX_RESULT_BYTES",
) -> bytes:
    """:func:`read_limited` on the ASGI ``receive`` itself: ``declared`` is the request's
    Content-Length, ``seconds`` how long the whole read may take (None: no bound)."""
    if declared is not None:
        # Any number of digits is a valid Content-Length: one past the limit is enough
        # to refuse it, and int() never sees more digits than the limit has.
        size = bounded_decimal(declared, limit + 1)
        if size is None and not (declared.isascii() and declared.isdigit()):
            raise Problem(400, "Content-Length is not a number", slug="bad-request")
        if size is None or size > limit:
            raise _too_large(limit, setting)
    received = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise client_closed()  # http.disconnect: the client went away
                received += message.get("body", b"")
                if len(received) > limit:
                    raise _too_large(limit, setting)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise Problem(
            408,
            f"the body did not arrive within {seconds:g} s (BODY_TIMEOUT)",
            slug="request-timeout",
            headers={"Connection": "close"},
        ) from None
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
