"""What the monitoring layer costs a hot GET, measured in process.

Under wrk, two rows that run the same code differ by a few percent from one round to
the next: most of a hot GET's server CPU is the kernel's work writing the response to a
socket, and it varies more between runs than the monitoring layer costs. So the
layer's cost is measured here instead, where nothing but the app runs: the service and
the same service built without monitoring (``create_app(monitoring=False)``), sharing
one lifespan state, answer the same L1 hit through a minimal ASGI harness, in
alternating rounds, timed with the process's CPU clock. The bench divides the
difference by what the whole request costs the server under wrk.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from starlette.types import ASGIApp, Message

from service.app import create_app
from service.config import Settings


async def monitoring_cost(
    settings: Settings, path: str, *, rounds: int = 15, requests: int = 4000
) -> tuple[float, float]:
    """Median CPU µs per ``GET path`` (an L1 hit) with the monitoring layer and without."""
    with_metrics = create_app(settings)
    without = create_app(settings, monitoring=False)
    async with with_metrics.router.lifespan_context(with_metrics) as state:
        shared: dict[str, Any] = dict(state or {})
        apps = {"on": with_metrics, "off": without}
        for app in apps.values():  # the first read fills L1
            await _get(app, path, shared)
        timings: dict[str, list[float]] = {"on": [], "off": []}
        for number in range(rounds):
            order = ("on", "off") if number % 2 == 0 else ("off", "on")
            for key in order:
                app = apps[key]
                started = time.process_time()
                for _ in range(requests):
                    await _get(app, path, shared)
                timings[key].append((time.process_time() - started) / requests * 1e6)
    return statistics.median(timings["on"]), statistics.median(timings["off"])


async def _get(app: ASGIApp, path: str, state: dict[str, Any]) -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": dict(state),
    }
    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"GET {path} in process answered {sent[0]['status']}, not 200")
