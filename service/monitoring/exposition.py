"""A metrics-only HTTP listener for METRICS_PORT, so /metrics need not share the API port.

Deliberately small: it answers ``GET /metrics`` (and HEAD) with the monitor's text
format, gzip-compressed when the scraper accepts it, closes each connection after one
response, and answers 404 or 405 to anything else. It runs in the service's event loop,
so it reads the very counters the API updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.core.codings import GZIP, compress
from service.core.negotiation import negotiate
from service.monitoring.performance import PerformanceMonitor

logger = logging.getLogger(__name__)
MAX_REQUEST_HEAD = 16 * 1024
READ_TIMEOUT = 10.0


class MetricsListener:
    """``async with MetricsListener(monitor, host, port):`` serves /metrics meanwhile."""

    def __init__(self, monitor: PerformanceMonitor, host: str, port: int) -> None:
        self.monitor = monitor
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> MetricsListener:
        # Under serve --workers N each worker listens on the port (SO_REUSEPORT) and
        # answers for all of them.
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_port=self.monitor.workers is not None
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        try:
            status, headers, body = await self._answer(head[:MAX_REQUEST_HEAD])
            headers["Cache-Control"] = "no-store"  # as every answer but a result read
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
            writer.write("\r\n".join([*lines, "", ""]).encode("latin-1") + body)
            with contextlib.suppress(OSError):
                await writer.drain()
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, dict[str, str], bytes]:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        fields: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                key = name.strip().lower()
                fields[key] = f"{fields[key]}, {value.strip()}" if key in fields else value.strip()
        if path != "/metrics":
            return "404 Not Found", {"Content-Length": "0", "Connection": "close"}, b""
        if method not in ("GET", "HEAD"):
            headers = {"Allow": "GET, HEAD", "Content-Length": "0", "Connection": "close"}
            return "405 Method Not Allowed", headers, b""
        accept = [fields["accept"]] if "accept" in fields else []
        body, headers = await self.monitor.exposition(accept)
        headers = {**headers, "Vary": "Accept-Encoding", "Connection": "close"}
        if negotiate(fields.get("accept-encoding"), (GZIP,)) == GZIP:
            body = compress(GZIP, 6, body)
            headers["Content-Encoding"] = GZIP
        headers["Content-Length"] = str(len(body))
        return "200 OK", headers, b"" if method == "HEAD" else body
