"""OpenTelemetry tracing, when OTEL_EXPORTER_OTLP_ENDPOINT is set (``pip install 'service[otel]'``).

What is traced: every request (a server span, from OpenTelemetry's ASGI middleware,
around everything including the hit path, with the response's ``Cache-Status`` as
``http.response.header.cache_status``: which tier answered), every Redis command (the shared
tier: lookups, compare-and-set fills, notices) and every PostgreSQL statement (through
asyncpg), each a child of the request it served. Log lines written while a span is
current carry its ``trace_id`` and ``span_id``. Spans go to the OTLP/HTTP endpoint in
batches, from a background thread.

Nothing here is imported, and nothing is wrapped or instrumented, unless tracing is
on: with the setting unset the service runs exactly the code it runs without this
module. The instrumentations are the OpenTelemetry project's own; asyncpg and redis-py
are instrumented process-wide while a :class:`Tracing` is started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service._version import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.types import ASGIApp

    from service.config import Settings

SERVICE_NAME = "results-service"
"""The ``service.name`` of the spans, unless OTEL_SERVICE_NAME says otherwise."""


class Tracing:
    """Started tracing: a tracer provider, the instrumentations, the log correlation.

    :func:`start_tracing` makes one; :meth:`wrap` puts the request spans around an app;
    :meth:`shutdown` flushes what is pending and undoes the instrumentation.
    """

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        self.provider = provider
        self._instrumentors: list[Any] = [
            AsyncPGInstrumentor(),  # type: ignore[no-untyped-call]
            RedisInstrumentor(),
        ]
        for instrumentor in self._instrumentors:
            instrumentor.instrument(tracer_provider=provider)
        self._record_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_with_trace_ids(self._record_factory))

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` inside a server span per request (``send``/``receive`` not spanned)."""
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        wrapped: ASGIApp = OpenTelemetryMiddleware(
            app,
            tracer_provider=self.provider,
            http_capture_headers_server_response=["cache-status"],
            exclude_spans=["receive", "send"],
        )
        return wrapped

    def shutdown(self) -> None:
        """Undo the instrumentation and flush pending spans (blocks: call it off the loop)."""
        for instrumentor in self._instrumentors:
            instrumentor.uninstrument()
        logging.setLogRecordFactory(self._record_factory)
        self.provider.shutdown()


def start_tracing(settings: Settings, exporter: SpanExporter | None = None) -> Tracing:
    """Tracing to ``settings.otel_exporter_otlp_endpoint`` over OTLP/HTTP, or to
    ``exporter`` (exported at once: for tests and local inspection)."""
    try:
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        from service.errors import ConfigurationError

        raise ConfigurationError(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "tracing needs: pip install 'service[otel]'"
        ) from None

    resource = Resource.create(
        {"service.name": SERVICE_NAME, "service.version": __version__}
    ).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint or ""
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces"))
        )
    return Tracing(provider)


def _with_trace_ids(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """``factory``, whose records made inside a span carry ``trace_id`` and ``span_id``
    (hex), which :mod:`service.logs`' formatters print. A record factory, not a handler
    filter, so every record gets them whatever handlers are configured, and when."""
    from opentelemetry import trace

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return record

    return make
