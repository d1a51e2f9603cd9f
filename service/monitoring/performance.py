"""PerformanceMonitor: aioprometheus metrics that stay cheap, bounded and right under load.

What it promises:

* **Its own Registry.** Nothing is registered globally, so two monitors (two apps, or
  tests) never collide, and what one exposes is exactly what it was given.
* **Bounded series.** ``endpoint`` is the route template (``/results/{analysis_id}``),
  never the raw path; every path no route matches shares ``endpoint="unmatched"``;
  ``method`` is one of the HTTP methods or ``other``. So neither many ids nor a
  scanner trying random paths can grow the number of series.
* **Cheap on the hot path.** A request costs two clock reads, one dictionary lookup
  and one histogram observation; counters that other parts already keep (the pool,
  the caches, compression) are read when Prometheus scrapes, never polled.
* **Statuses as the client caused them.** A client that goes away before its request
  is read whole is counted as ``499`` (nginx's "client closed request"), so in the
  ``4xx`` class: a flaky client never shows as a server error. A request the server
  cancels (uvicorn's ``timeout_graceful_shutdown``) is not counted: the process is
  going away, and its metrics with it.
* **Buckets for a fast service**: from 100 µs to 10 s, since a cached read takes well
  under a millisecond and a histogram whose first bucket is 5 ms says nothing of it.

The specification's ``track_request(method, endpoint, duration)`` and
``track_cache(cache_type, hit)`` record by hand what the middleware and the
scrape-time readers record by themselves.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
from bisect import bisect_left
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.histogram import Histogram as Buckets
from aioprometheus.renderer import render
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service._version import __version__

if TYPE_CHECKING:
    from service.cache.manager import CacheManager
    from service.cache.result_cache import ResultCache
    from service.core.compression import CompressionStats
    from service.db.optimization import QueryOptimizer
    from service.db.pool import ConnectionPool
    from service.monitoring.workers import WorkerSet

LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: 100 µs to 10 s, about 2.5x apart."""
TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED: Final = "unmatched"
CACHE_TYPES: Final = ("l1", "redis", "results")
_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})
_BREAKER: Final = {"closed": 0, "half-open": 1, "open": 2}
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


class PerformanceMonitor:
    """The service's metrics on one aioprometheus :class:`Registry`.

    Use :meth:`middleware` to time requests, the ``watch_*`` methods to expose the
    statistics of a pool, a cache or the compression layer, and :meth:`render` (or
    the ``/metrics`` route of :mod:`service.api.metrics`) to serve them.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.request_duration = self._histogram(
            "request_duration_seconds",
            "Time from request to the end of the response, by method and route template.",
        )
        self.responses = Counter(
            "responses_total", "Responses by method, route template and status class.", registry=r
        )
        self.in_progress = Gauge("requests_in_progress", "Requests being handled.", registry=r)
        self.cache_hits = Counter("cache_hits_total", "Cache lookups that hit.", registry=r)
        self.cache_misses = Counter("cache_misses_total", "Cache lookups that missed.", registry=r)
        self.cache_errors = Counter(
            "cache_errors_total", "Shared-cache operations that failed or timed out.", registry=r
        )
        self.breaker_state = Gauge(
            "cache_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", registry=r
        )
        self.pool_gauges = {
            name: Gauge(f"db_pool_{name}", doc, registry=r)
            for name, doc in (
                ("size", "Connections the pool keeps open (DB_POOL_SIZE)."),
                ("max_overflow", "Extra connections allowed under load (DB_MAX_OVERFLOW)."),
                ("checked_out", "Connections in use."),
                ("idle", "Open connections waiting in the pool."),
                ("overflow", "Connections open beyond the pool size."),
                ("waiting", "Callers waiting for a connection."),
            )
        }
        self.pool_timeouts = Counter(
            "db_pool_timeouts_total", "Callers that gave up waiting for a connection.", registry=r
        )
        self.pool_acquire = self._histogram(
            "db_pool_acquire_seconds", "Time to get a connection from the pool."
        )
        self.query_duration = self._histogram(
            "db_query_duration_seconds", "Database operations of the results store, by operation."
        )
        self.compression_in = Counter(
            "compression_bytes_in_total", "Bytes before compression, by coding.", registry=r
        )
        self.compression_out = Counter(
            "compression_bytes_out_total", "Bytes after compression, by coding.", registry=r
        )
        self.maintenance = Counter(
            "db_maintenance_statements_total",
            "ANALYZE / VACUUM statements the optimizer ran, by operation and outcome.",
            registry=r,
        )
        self.build_info = Gauge("build_info", "Version and runtime of this process.", registry=r)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._requests: dict[tuple[str, str], RequestSlot] = {}
        self._tracked_cache: dict[tuple[str, bool], int] = {}
        # By what they read: watching a second pool (say after a restart) replaces the first.
        self._readers: dict[str, Callable[[], None]] = {}
        self._cache_readers: dict[str, Callable[[], dict[tuple[str, bool], int]]] = {}
        self.requests_in_progress = 0
        self.workers: WorkerSet | None = None
        """The other workers of ``serve --workers N``, whose series a scrape includes."""

    def _histogram(self, name: str, doc: str) -> Histogram:
        """Every histogram here shares LATENCY_BUCKETS: :class:`_Series` relies on it."""
        return Histogram(name, doc, registry=self.registry, buckets=LATENCY_BUCKETS)

    # The specification's interface.

    def track_request(self, method: str, endpoint: str, duration: float) -> None:
        """Record one request of ``duration`` seconds (the middleware does this itself)."""
        self.observe(self.request_duration, {"method": method, "endpoint": endpoint}, duration)

    def track_cache(self, cache_type: str, hit: bool) -> None:
        """Count one lookup of ``cache_type`` (any name of your own, or l1/redis/results)."""
        key = (cache_type, hit)
        self._tracked_cache[key] = self._tracked_cache.get(key, 0) + 1

    # Recording.

    def observe(self, histogram: Histogram, labels: dict[str, str], value: float) -> None:
        """Record ``value`` in ``histogram`` under ``labels``.

        One bisect and two additions: aioprometheus would encode the labels and walk
        every bucket on each call, which costs more than the rest of a cached read's
        instrumentation. The totals reach aioprometheus's objects at scrape time.
        """
        key = (histogram.name, *labels.values())
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(histogram, labels)
        series.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        series.total += value

    def count_response(self, method: str, endpoint: str, status: int) -> None:
        """Count one response of ``status`` (the middleware does this itself)."""
        self.request_slot(method, endpoint).statuses[min(status // 100, 5)] += 1

    def request_slot(self, method: str, endpoint: str) -> RequestSlot:
        """The counters of one ``(method, endpoint)``, made on first use."""
        key = (method, endpoint)
        slot = self._requests.get(key)
        if slot is None:
            labels = {"method": method, "endpoint": endpoint}
            series = self._series.get((self.request_duration.name, method, endpoint))
            if series is None:
                series = self._series[(self.request_duration.name, method, endpoint)] = _Series(
                    self.request_duration, labels
                )
            slot = self._requests[key] = RequestSlot(series)
        return slot

    # What other parts already count, read at scrape time.

    def watch_pool(self, pool: ConnectionPool) -> None:
        """Expose the pool's gauges and timeouts; time its checkouts and the store's queries."""
        pool.on_acquire = lambda seconds: self.observe(self.pool_acquire, {}, seconds)

        def read() -> None:
            stats = pool.stats()
            for name, gauge in self.pool_gauges.items():
                gauge.set({}, getattr(stats, name))
            self.pool_timeouts.set({}, stats.timeouts)

        self._readers["pool"] = read

    def time_query(self, operation: str, seconds: float) -> None:
        """Record one database operation (the results store calls this)."""
        self.observe(self.query_duration, {"operation": operation}, seconds)

    def watch_cache(self, cache: CacheManager) -> None:
        """Expose the shared cache's errors and circuit-breaker state."""

        def read() -> None:
            stats = cache.stats()
            if stats.backend == "redis":
                self.cache_errors.set({"cache_type": "redis"}, stats.errors)
                self.breaker_state.set({"cache_type": "redis"}, _BREAKER.get(stats.breaker, 2))

        self._readers["cache"] = read

    def watch_results(self, results: ResultCache) -> None:
        """Expose hits and misses of L1, Redis and the result cache as a whole."""

        def read() -> dict[tuple[str, bool], int]:
            s = results.stats()
            # A read that joined another's flight shares that flight's answer and source.
            shared_hits = s.shared_hits + s.joined_hits
            loads = s.loads + s.joined - s.joined_hits
            counts = {("results", True): s.l1_hits + shared_hits, ("results", False): loads}
            if results.l1 is not None:
                counts[("l1", True)] = s.l1_hits
                counts[("l1", False)] = shared_hits + loads
            if results.cache.backend.name == "redis":
                counts[("redis", True)] = shared_hits
                counts[("redis", False)] = loads
            return counts

        self._cache_readers["results"] = read

    def watch_compression(self, stats: CompressionStats) -> None:
        """Expose bytes before and after compression, by coding."""

        def read() -> None:
            for coding, before in stats.bytes_in.items():
                self.compression_in.set({"encoding": coding}, before)
                self.compression_out.set({"encoding": coding}, stats.bytes_out.get(coding, 0))

        self._readers["compression"] = read

    def watch_optimizer(self, optimizer: QueryOptimizer) -> None:
        """Expose the maintenance statements run, by operation and outcome (done,
        skipped, timed out): a periodic task that keeps skipping shows here."""

        def read() -> None:
            for (operation, outcome), count in optimizer.statements.items():
                self.maintenance.set({"operation": operation, "outcome": outcome}, count)

        self._readers["optimizer"] = read

    # Exposition.

    def render(self, accept: Sequence[str] = ()) -> tuple[bytes, dict[str, str]]:
        """This process's metrics in the format ``accept`` asks for (text unless told
        otherwise)."""
        self._collect()
        body, headers = render(self.registry, list(accept))
        return body, dict(headers)

    def text(self) -> bytes:
        """This process's metrics in the text format."""
        return self.render()[0]

    async def exposition(self, accept: Sequence[str] = ()) -> tuple[bytes, dict[str, str]]:
        """What a scrape gets: :meth:`render`, or under ``serve --workers N`` every
        worker's series in the text format (which every scraper accepts)."""
        if self.workers is None:
            return self.render(accept)
        return await self.workers.exposition(), {"Content-Type": TEXT_FORMAT}

    def middleware(self, app: ASGIApp, routes: Sequence[BaseRoute] = ()) -> ASGIApp:
        """``app`` timed and counted; ``routes`` give the endpoint labels (default: the
        app's own when it is a Starlette app)."""
        return MonitoringMiddleware(app, self, routes)

    def _collect(self) -> None:
        for series in list(self._series.values()):
            series.publish()
        for read in self._readers.values():
            read()
        counts = dict(self._tracked_cache)
        for read_cache in self._cache_readers.values():
            for key, value in read_cache().items():
                counts[key] = counts.get(key, 0) + value
        for (cache_type, hit), value in counts.items():
            (self.cache_hits if hit else self.cache_misses).set({"cache_type": cache_type}, value)
        for (method, endpoint), slot in list(self._requests.items()):
            for status_class, value in enumerate(slot.statuses):
                if value:
                    labels = {"method": method, "endpoint": endpoint}
                    self.responses.set({**labels, "status_class": f"{status_class}xx"}, value)
        self.in_progress.set({}, self.requests_in_progress)
        self.build_info.set(_build_labels(), 1)


class _Series:
    """One histogram series: per-bucket counts (not cumulative), published on scrape."""

    __slots__ = ("counts", "histogram", "labels", "target", "total")

    def __init__(self, histogram: Histogram, labels: dict[str, str]) -> None:
        self.histogram = histogram
        self.labels = labels
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.target = Buckets(*LATENCY_BUCKETS)
        histogram.set_value(labels, self.target)

    def publish(self) -> None:
        cumulative = 0
        for bound, count in zip(self.target.buckets, self.counts, strict=True):
            cumulative += count
            self.target.buckets[bound] = cumulative
        self.target.observations = cumulative
        self.target.sum = self.total


class RequestSlot:
    """What the middleware updates per request: one histogram series and the
    responses by status class (index 1 to 5; 0 holds nothing a server sends)."""

    __slots__ = ("series", "statuses")

    def __init__(self, series: _Series) -> None:
        self.series = series
        self.statuses = [0] * 6

    def record(self, status: int, duration: float) -> None:
        """One response of ``status`` that took ``duration`` seconds."""
        series = self.series
        series.counts[bisect_left(LATENCY_BUCKETS, duration)] += 1
        series.total += duration
        self.statuses[min(status // 100, 5)] += 1


class MonitoringMiddleware:
    """Pure ASGI: times each HTTP request to the end of its response and counts it.

    The status counted is the one sent: a client that disconnected mid-body gets the
    499 that :func:`service.api.responses.client_closed` answers (sent to nobody, but
    counted as a 4xx). A request cancelled under it (uvicorn cancels what is still
    running ``timeout_graceful_shutdown`` seconds after SIGTERM) is re-raised and not
    counted: the server is going away with its metrics, and the service's app logs it
    in one WARNING line (:class:`service.app.CancelledRequests`).
    """

    def __init__(
        self, app: ASGIApp, monitor: PerformanceMonitor, routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.monitor = monitor
        self.routes = tuple(routes) or tuple(getattr(app, "routes", ()))
        self._slot = functools.lru_cache(maxsize=4096)(self._find_slot)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Everything that depends only on the request line is looked up once per distinct
        # (method, path): what is left per request is two clock reads and three additions.
        slot = self._slot(scope["method"], scope["path"], scope.get("root_path", ""))
        status = 500  # what the client gets if the app fails before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        monitor = self.monitor
        monitor.requests_in_progress += 1
        started = perf_counter()
        cancelled = False
        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            cancelled = True  # logged (one line) and answered by the app: see above
            raise
        finally:
            monitor.requests_in_progress -= 1
            if not cancelled:
                slot.record(status, perf_counter() - started)

    def _find_slot(self, method: str, path: str, root_path: str) -> RequestSlot:
        method = method if method in _METHODS else "other"
        return self.monitor.request_slot(method, self._match(path, root_path))

    def _match(self, path: str, root_path: str) -> str:
        scope: dict[str, Any] = {"type": "http", "path": path, "root_path": root_path}
        scope["method"] = "GET"
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return _template(route)
        return UNMATCHED


def _template(route: BaseRoute) -> str:
    if isinstance(route, Route | Mount):
        return _CONVERTOR.sub(r"{\1}", route.path) + ("/{path}" if isinstance(route, Mount) else "")
    return UNMATCHED


@functools.cache
def _build_labels() -> dict[str, str]:
    """Read once, from inside the running event loop (a scrape)."""
    import asyncio

    from redis.utils import HIREDIS_AVAILABLE

    loop = type(asyncio.get_running_loop()).__module__
    return {
        "version": __version__,
        "python": ".".join(map(str, sys.version_info[:3])),
        "hiredis": str(bool(HIREDIS_AVAILABLE)).lower(),
        "uvloop": str(loop.startswith("uvloop")).lower(),
    }
