"""What the service tells caches downstream: ``Cache-Control`` and ``Cache-Status``.

Results change, and a cache that reuses an old version without asking shows a client
something an acknowledged write replaced. So by default a result read says
``Cache-Control: no-cache``: any cache may keep it, but must revalidate it (the ETag
makes that a cheap 304) before each reuse. An operator who accepts some staleness sets
``HTTP_MAX_AGE``, ``HTTP_S_MAXAGE`` (shared caches only), ``HTTP_STALE_WHILE_REVALIDATE``
and ``STALE_IF_ERROR`` (RFC 9111 section 5.2.2, RFC 5861); the same policy goes on the
list page. Everything else (errors, PUT and DELETE answers, admin, health, metrics)
says ``no-store``: :class:`NoStoreByDefault` adds it to any response without a
``Cache-Control`` of its own. Without it RFC 9111 section 4.2.2 lets a cache give a
404 a heuristic lifetime, so a result created afterwards could stay hidden.

``Cache-Status`` (RFC 9211) says which of the service's tiers answered, beside the
older ``X-Cache``: ``service; hit; detail=l1`` (in-process), ``detail=shared`` (Redis),
``service; fwd=miss`` (the database), and ``service; fwd=stale; detail=stale-if-error``
when the database failed and a stored copy past its TTL was served instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from service.config import Settings

Headers = list[tuple[bytes, bytes]]
Tier = Literal["l1", "shared", "database", "stale"]

CACHE_NAME: Final = "service"
"""How ``Cache-Status`` names this cache."""
NO_STORE: Final = (b"cache-control", b"no-store")

_CACHE_STATUS: Final[dict[Tier, str]] = {
    "l1": f"{CACHE_NAME}; hit; detail=l1",
    "shared": f"{CACHE_NAME}; hit; detail=shared",
    "database": f"{CACHE_NAME}; fwd=miss",
    "stale": f"{CACHE_NAME}; fwd=stale; detail=stale-if-error",
}
_X_CACHE: Final[dict[Tier, bytes]] = {
    "l1": b"HIT",
    "shared": b"HIT",
    "database": b"MISS",
    "stale": b"STALE",
}


def cache_control(settings: Settings) -> str:
    """The ``Cache-Control`` of result reads under ``settings`` (see the module docstring)."""
    if not (
        settings.http_max_age
        or settings.http_s_maxage is not None
        or settings.http_stale_while_revalidate
        or settings.stale_if_error
    ):
        return "no-cache"
    directives = [f"max-age={settings.http_max_age}"]
    if settings.http_s_maxage is not None:
        directives.append(f"s-maxage={settings.http_s_maxage}")
    if settings.http_stale_while_revalidate:
        directives.append(f"stale-while-revalidate={settings.http_stale_while_revalidate}")
    if settings.stale_if_error:
        directives.append(f"stale-if-error={settings.stale_if_error}")
    return ", ".join(directives)


class ReadHeaders:
    """The headers a result read ends with, per tier that answered: built once."""

    __slots__ = ("cache_control", "tails")

    def __init__(self, settings: Settings) -> None:
        self.cache_control = cache_control(settings)
        control = (b"cache-control", self.cache_control.encode())
        self.tails: dict[Tier, Headers] = {
            tier: [
                control,
                (b"cache-status", _CACHE_STATUS[tier].encode()),
                (b"x-cache", _X_CACHE[tier]),
            ]
            for tier in _CACHE_STATUS
        }

    def cache_status(self, tier: Tier) -> dict[str, str]:
        """``Cache-Status`` and ``X-Cache`` of an error answered after a read of ``tier``."""
        return {"Cache-Status": _CACHE_STATUS[tier], "X-Cache": _X_CACHE[tier].decode()}


class NoStoreByDefault:
    """Pure ASGI: ``Cache-Control: no-store`` on every response that set none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    message = {**message, "headers": [*headers, NO_STORE]}
            await send(message)

        await self.app(scope, receive, send_with_policy)
