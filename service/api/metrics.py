"""``GET /metrics``: the PerformanceMonitor in Prometheus text format.

Served on the API port unless METRICS_PORT moves it to a port of its own
(:mod:`service.monitoring.exposition`). Compressed like any other response when the
scraper asks (Prometheus sends ``Accept-Encoding: gzip``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.state import state_of


async def metrics(request: Request) -> Response:
    body, headers = await state_of(request)["monitor"].exposition(request.headers.getlist("accept"))
    return Response(body, headers=headers)


routes = [Route("/metrics", metrics, methods=["GET"])]
