"""An ASGI app whose every request holds the event loop for BUSY seconds.

So each turn of the server's loop takes as long as the requests it runs, as a loop
busy with real work does; ``tests/service/test_accepting.py`` serves it.
"""

from __future__ import annotations

import time

from starlette.types import Receive, Scope, Send

BUSY = 0.01


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # no lifespan: uvicorn runs it with --lifespan off
    time.sleep(BUSY)  # deliberately blocking: this app stands for CPU-bound work
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
