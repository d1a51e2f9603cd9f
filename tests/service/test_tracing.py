"""Tracing: spans for requests, Redis commands and SQL statements; trace ids in logs;
nothing loaded when it is off. Against the real PostgreSQL and Redis, exported in
memory and over OTLP/HTTP to a receiver the test runs."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.app import create_app
from service.config import Settings
from service.logs import JSONFormatter, TextFormatter
from service.tracing import start_tracing
from tests.helpers import serving, unique_id


def test_nothing_of_tracing_is_loaded_when_it_is_off() -> None:
    """No tracer, exporter or instrumentation is imported, so nothing is wrapped.

    (redis-py imports OpenTelemetry's metrics API by itself when the packages are
    installed; it records nothing unless told to.)
    """
    script = textwrap.dedent(
        """
        import sys
        from service.app import create_app
        from service.config import Settings
        create_app(Settings())
        loaded = [m for m in sys.modules if m.startswith((
            "service.tracing", "opentelemetry.instrumentation",
            "opentelemetry.sdk.trace", "opentelemetry.exporter",
        ))]
        print(loaded)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout


def by_trace(spans: tuple[ReadableSpan, ...]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span)
    return traces


def server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    (found,) = [s for s in spans if s.kind == SpanKind.SERVER]
    return found


def attribute(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(name)


async def test_requests_cache_tiers_and_queries_are_spans_of_one_trace(
    pg_url: str, redis_url: str, prefix: str
) -> None:
    settings = Settings(database_url=pg_url, redis_url=redis_url, cache_prefix=prefix)
    exporter = InMemorySpanExporter()
    app = create_app(settings, tracing=start_tracing(settings, exporter))
    rid = unique_id("trace")
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            assert (await client.put(f"/results/{rid}", json={"a": 1})).status_code == 201
            assert (await client.get(f"/results/{rid}")).status_code == 200  # from Redis
            assert (await client.get(f"/results/{rid}")).status_code == 200  # from L1
    # The lifespan's end shut tracing down: what it wrapped is unwrapped again.
    traces = list(by_trace(exporter.get_finished_spans()).values())
    requests = [t for t in traces if any(s.kind == SpanKind.SERVER for s in t)]
    requests.sort(key=lambda t: server_span(t).start_time or 0)
    put, shared, local = requests[-3:]

    def systems(spans: list[ReadableSpan]) -> set[str]:
        return {str(attribute(s, "db.system")) for s in spans if attribute(s, "db.system")}

    assert systems(put) == {"postgresql", "redis"}  # the upsert, then the compare-and-set
    root = server_span(put)
    assert root.context is not None
    for child in put:
        if child is not root:
            assert child.parent is not None
            assert child.parent.span_id == root.context.span_id
    assert systems(shared) == {"redis"}  # a Redis GET, no SQL
    assert systems(local) == set()  # answered in process
    statuses = [attribute(server_span(t), "http.response.header.cache_status") for t in requests]
    assert statuses[-2:] == [("service; hit; detail=shared",), ("service; hit; detail=l1",)]


async def test_log_lines_carry_the_trace_id(pg_url: str) -> None:
    settings = Settings(database_url=pg_url)
    exporter = InMemorySpanExporter()
    tracing = start_tracing(settings, exporter)
    try:
        tracer = tracing.provider.get_tracer("test")
        with tracer.start_as_current_span("work") as span:
            record = logging.getLogger("service.test").makeRecord(
                "service.test", logging.WARNING, __file__, 1, "inside", (), None
            )
        outside = logging.getLogger("service.test").makeRecord(
            "service.test", logging.WARNING, __file__, 1, "outside", (), None
        )
    finally:
        tracing.shutdown()
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert f"trace_id={trace_id}" in TextFormatter().format(record)
    assert f'"trace_id":"{trace_id}"' in JSONFormatter().format(record)
    assert "trace_id" not in TextFormatter().format(outside)
    after = logging.getLogger("service.test").makeRecord(
        "service.test", logging.WARNING, __file__, 1, "after", (), None
    )
    assert not hasattr(after, "trace_id"), "shutdown restores the record factory"


async def test_spans_reach_an_otlp_http_endpoint(pg_url: str, redis_url: str, prefix: str) -> None:
    """With only OTEL_EXPORTER_OTLP_ENDPOINT set, the app exports its spans there; the
    app's shutdown flushes them."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        received.append(message)
        return Response(b"", media_type="application/x-protobuf")

    receiver = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    async with serving(receiver) as endpoint:
        settings = Settings.from_environ(
            {
                "DATABASE_URL": pg_url,
                "REDIS_URL": redis_url,
                "CACHE_PREFIX": prefix,
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            },
            env_file=None,
        )
        app = create_app(settings)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                await client.put(f"/results/{unique_id('otlp')}", json={"a": 1})
    spans = [
        (resource.resource, span)
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert spans, "nothing was exported"
    names = {
        attr.value.string_value
        for resource, _ in spans
        for attr in resource.attributes
        if attr.key == "service.name"
    }
    assert names == {"results-service"}
    assert any(span.kind == span.SPAN_KIND_SERVER for _, span in spans)
