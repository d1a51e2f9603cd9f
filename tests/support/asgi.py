"""Driving an ASGI app by hand: one request's scope, its body messages, what it sent."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Sequence
from typing import Any

from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.config import Settings
from tests.helpers import forget_prefix

Headers = list[tuple[str, str]]
Chunks = Sequence[bytes | None]
"""A request body as it arrives: one message per item; None is the client going away."""


class Recorder:
    """An app behind a fast path, noting each request that reached it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


def request_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a request to ``path`` (no query string, no root path)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace"),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def exchange(
    app: ASGIApp,
    state: dict[str, Any],
    method: str,
    path: str,
    headers: Headers,
    chunks: Chunks = (b"",),
) -> list[Message]:
    """Every message ``app`` sends for one request, with a copy of the lifespan
    ``state``; after the last chunk the client is gone."""
    sent: list[Message] = []
    pending = list(chunks)

    async def receive() -> Message:
        chunk = pending.pop(0) if pending else None
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(copy.deepcopy(message))

    encoded = [(b"host", b"service"), *((k.encode(), v.encode()) for k, v in headers)]
    scope = {**request_scope(method, path, encoded), "state": dict(state)}
    await app(scope, receive, send)
    return sent


@contextlib.asynccontextmanager
async def full_stack(settings: Settings) -> AsyncIterator[tuple[ASGIApp, dict[str, Any]]]:
    """The service without its fast paths, started, and its lifespan state: the
    reference the fast paths are held to. Its cache keys are removed afterwards."""
    app = create_app(settings, hit_path=False)
    async with LifespanManager(app) as manager:
        yield app, manager._state
    await forget_prefix(settings.cache_prefix)
