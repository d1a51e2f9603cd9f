"""Logging set-up: key=value text for people, one JSON object a line for containers."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:  # written inside a span (service.tracing)
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """``key=value`` text; a record written inside a span ends with its trace_id."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return text
        head, newline, tail = text.partition("\n")  # before a traceback, if any
        span_id = getattr(record, "span_id", "")
        return f"{head} trace_id={trace_id} span_id={span_id}{newline}{tail}"


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every logger (ours, uvicorn's, SQLAlchemy's) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn.access is left alone: uvicorn switches it off unless --access-log is given.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Alembic narrates every step at INFO; service.db.migrations logs what changed.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
    quiet_shutdown_cancellations()


class ShutdownCancellations(logging.Filter):
    """On ``uvicorn.error``: a graceful shutdown's cancellations are not errors.

    When in-flight requests outlive ``timeout_graceful_shutdown``, uvicorn logs
    "Cancel N running task(s)" at ERROR, then "Exception in ASGI application" with a
    full traceback of each request's ``CancelledError``. Neither is a fault (an operator
    stopped the server; a slow client may have held a request open), so the first is
    demoted to WARNING and the second dropped: :class:`service.app.CancelledRequests`
    already logged that request in one WARNING line (method, path, time) and answered
    it. Any other record, and any other exception's traceback, passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError):
            return False
        message = record.msg
        if isinstance(message, str) and message.startswith("Cancel ") and "graceful" in message:
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


def quiet_shutdown_cancellations() -> None:
    """Install :class:`ShutdownCancellations` on ``uvicorn.error`` (once)."""
    target = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ShutdownCancellations) for f in target.filters):
        target.addFilter(ShutdownCancellations())


class RateLimitedLog:
    """Log a recurring event at most once per ``interval`` seconds per key.

    The line that does get through says how many were suppressed since the last one,
    so an outage that fails thousands of requests a second costs one line a second.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d more like this suppressed)"
            args = (*args, suppressed)
        self._logger.warning(message, *args)
