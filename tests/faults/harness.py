"""Harness of the fault suite: private servers, service replicas as processes, and a ledger.

The promises under test are about the *history* of a run, not about one response: no
acknowledged write is lost, no read returns a version older than one acknowledged more
than a bound ago, no request fails except with 503. So the load driver records every
acknowledged PUT (its version and when the acknowledgment arrived) and every GET (what
it returned, when it was sent and answered), and the verdicts are computed afterwards,
with PostgreSQL, read directly rather than through the service, as the judge of what
was kept.

Everything runs on servers of the test's own (a private ``redis-server`` and a private
PostgreSQL cluster), because the faults stop, freeze and kill them; the shared servers
on 6379 and 5432 are never touched. The service runs as ``python -m service serve``,
exactly as deployed, so its signal handling, start-up and logs are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import itertools
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
import httpx
import orjson
import redis.asyncio as aioredis

from tests.helpers import free_port
from tests.support.private_postgres import PrivateCluster, private_postgres
from tests.support.private_redis import PrivateRedis, private_redis
from tests.support.server import service_environ, stop_process, wait_healthy

STARTUP_TIMEOUT = 30.0
"""Seconds a replica gets to answer ``/healthz`` (two cores, migrations on first start)."""
STOP_TIMEOUT = 20.0
"""Seconds a replica gets after SIGTERM before it is killed (more than its drain time)."""
GRACEFUL_TIMEOUT = 10.0
"""The replicas' ``--graceful-timeout``: how long SIGTERM lets requests in flight run."""
REDIS_TIMEOUT = 0.25
"""The replicas' REDIS_TIMEOUT: short, so a frozen Redis costs the suite little time."""
REQUEST_TIMEOUT = 15.0
"""The load's HTTP timeout: longer than anything the service may legitimately take."""

ERROR_LINE = re.compile(r"\b(?:ERROR|CRITICAL)\b|Traceback")
"""A log line that reports a failure: level ERROR or CRITICAL, or a Python traceback."""
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
"""The start of a log record in the text format: what ends the traceback before it."""


@dataclass(frozen=True, slots=True)
class Profile:
    """How much load a scenario runs: a short one in the default suite, minutes with --long."""

    phase: float
    """Seconds of load before, during and after each fault."""
    ids: int
    """Distinct analysis ids the load writes and reads."""
    concurrency: int
    """Concurrent clients."""
    long: bool

    def at_least(self, seconds: float) -> float:
        """The phase, but no shorter than ``seconds`` (a fault that needs time to show)."""
        return max(self.phase, seconds)


SHORT = Profile(phase=1.5, ids=16, concurrency=6, long=False)
LONG = Profile(phase=60.0, ids=200, concurrency=16, long=True)


def version_of(response: httpx.Response) -> int | None:
    """The version an answer carries in its ETag (``"3"``, ``W/"3"``, ``"3-br"``), if any."""
    tag = response.headers.get("etag")
    if tag is None:
        return None
    digits = tag.removeprefix("W/").strip('"').partition("-")[0]
    return int(digits) if digits.isdigit() else None


# --- service replicas --------------------------------------------------------------------


class ServiceProcess:
    """One replica: ``python -m service serve --host 127.0.0.1 --port <free>``.

    Its stderr (where the service logs) and stdout go to files of their own, never a
    pipe, so a chatty replica cannot block, and a test can read the log after the
    process is gone to check that the fault caused no error it did not expect.
    """

    def __init__(
        self, name: str, env: Mapping[str, str], scratch: Path, args: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.env = dict(env)
        self.args = tuple(args)
        self.home = scratch / name / "home"
        self.stderr_path = scratch / name / "stderr.log"
        self.stdout_path = scratch / name / "stdout.log"
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def stderr(self) -> str:
        """What the replica has logged so far."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def error_lines(self, allowed: Iterable[str] = ()) -> list[str]:
        """Lines of stderr reporting an error (:data:`ERROR_LINE`), except those matching
        one of the ``allowed`` regular expressions (what the scenario expects)."""
        patterns = [re.compile(pattern) for pattern in allowed]
        return [
            line
            for line in self.stderr().splitlines()
            if ERROR_LINE.search(line) and not any(p.search(line) for p in patterns)
        ]

    async def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Run the replica and return once ``/healthz`` answers 200."""
        assert self.process is None, f"{self.name} was started already"
        self.home.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]
        with self.stderr_path.open("ab") as err, self.stdout_path.open("ab") as out:
            # HOME and the working directory are the replica's own: no ./.env of the
            # checkout, no SQLite default outside the scratch directory.
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=service_environ(self.home, self.env),
                cwd=self.home,
            )
        await wait_healthy(self.url, self.process, timeout, name=self.name, output=self.stderr)

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, as an orchestrator stops a replica; its exit status once it has drained.

        Raises AssertionError (after killing it) if it does not exit within ``timeout``.
        """
        assert self.process is not None, f"{self.name} is not running"
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            await self.stop()
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s of SIGTERM:\n{self.stderr()}"
            ) from None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the replica, if it still runs."""
        if self.process is not None and self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT; always reaps. Idempotent, for clean-up."""
        if self.process is not None:
            await stop_process(self.process, STOP_TIMEOUT)


@dataclass
class FaultBed:
    """A private Redis and PostgreSQL, and the replicas started on them.

    Every replica of one bed shares a CACHE_PREFIX, so they are replicas of one
    deployment (same keys, same invalidation channel); a new bed starts from nothing.
    """

    redis: PrivateRedis
    postgres: PrivateCluster
    scratch: Path
    prefix: str = field(default_factory=lambda: f"fault{uuid.uuid4().hex[:8]}")
    replicas: list[ServiceProcess] = field(default_factory=list)

    def environment(self, l1_ttl: float, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The settings of a replica of this bed; ``env`` on top."""
        return {
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis.url,
            "CACHE_PREFIX": self.prefix,
            "L1_TTL": f"{l1_ttl:g}",
            "LOG_LEVEL": "info",
            "REDIS_TIMEOUT": f"{REDIS_TIMEOUT:g}",
            **(env or {}),
        }

    async def start_replica(
        self, name: str, *, l1_ttl: float, env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        """Start a replica on this bed's servers; it is stopped when the bed is."""
        replica = ServiceProcess(
            f"{name}-{len(self.replicas)}",
            self.environment(l1_ttl, env),
            self.scratch,
            ("--graceful-timeout", f"{GRACEFUL_TIMEOUT:g}"),
        )
        self.replicas.append(replica)
        await replica.start()
        return replica

    def error_lines(self, allowed: Iterable[str] = ()) -> dict[str, list[str]]:
        """Each replica's unexpected error lines (see :meth:`ServiceProcess.error_lines`),
        for every replica this bed ever started; only replicas that have some."""
        allowed = tuple(allowed)
        found = {r.name: r.error_lines(allowed) for r in self.replicas}
        return {name: lines for name, lines in found.items() if lines}

    def error_report(self, context: int = 12, limit: int = 3) -> str:
        """The first ``limit`` error records of each replica, each its first line and the
        last ``context`` lines of the traceback under it (where the cause is): what a
        failed assertion should show."""
        parts: list[str] = []
        for replica in self.replicas:
            lines = replica.stderr().splitlines()
            starts = [n for n, line in enumerate(lines) if ERROR_LINE.search(line)]
            shown = 0
            for n in starts:
                if shown == limit:
                    break
                if lines[n].startswith(("Traceback", " ")) and n - 1 in starts:
                    continue  # the traceback of the record just shown
                end = n + 1
                while end < len(lines) and not LOG_RECORD.match(lines[end]):
                    end += 1
                tail = lines[max(n + 1, end - context) : end]
                parts.append("\n".join((f"--- {replica.name}:", lines[n], "  ...", *tail)))
                shown += 1
        return "\n".join(parts)

    async def stored_versions(self, ids: Iterable[str]) -> dict[str, int]:
        """Each id's version as PostgreSQL holds it, read directly (not through the service)."""
        connection = await asyncpg.connect(self.postgres.dsn)
        try:
            rows = await connection.fetch(
                "SELECT analysis_id, version FROM results WHERE analysis_id = ANY($1::text[])",
                list(ids),
            )
        finally:
            await connection.close()
        return {row["analysis_id"]: int(row["version"]) for row in rows}

    async def shared_versions(
        self, ids: Iterable[str], redis_url: str | None = None
    ) -> dict[str, int | None]:
        """Each id's version as Redis holds it (None: no entry), without the service;
        ``redis_url``: another server than the bed's (a promoted replica, say)."""
        keys = list(ids)
        client = aioredis.Redis.from_url(redis_url or self.redis.url, socket_timeout=5)
        try:
            values = await client.mget([f"{self.prefix}:results:{i}" for i in keys])
        finally:
            await client.aclose()
        versions: dict[str, int | None] = {}
        for analysis_id, value in zip(keys, values, strict=True):
            head = value.partition(b" ")[0] if isinstance(value, bytes) else b""
            versions[analysis_id] = int(head) if head.isdigit() else None
        return versions


@asynccontextmanager
async def fault_bed() -> AsyncIterator[FaultBed]:
    """A :class:`FaultBed` on fresh private servers. Afterwards every replica is stopped,
    Redis thawed and stopped, the cluster stopped and deleted, also when the test failed."""
    scratch = Path(tempfile.mkdtemp(prefix="svc-faults-"))
    try:
        async with private_postgres() as postgres, private_redis() as redis:
            bed = FaultBed(redis, postgres, scratch)
            try:
                yield bed
            finally:
                # A frozen Redis would hold its own SIGTERM until SIGKILL; a replica
                # draining towards it would wait for its timeouts.
                redis.thaw()
                await asyncio.gather(*(replica.stop() for replica in bed.replicas))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the ledger ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledged (2xx) PUT."""

    analysis_id: str
    version: int
    sent_at: float
    acked_at: float
    """When the acknowledgment arrived (time.monotonic of this process)."""
    replica: str


@dataclass(frozen=True, slots=True)
class Read:
    """An answered GET: its status and the version it returned (None without one)."""

    analysis_id: str
    status: int
    version: int | None
    sent_at: float
    received_at: float
    replica: str


@dataclass(frozen=True, slots=True)
class Exchange:
    """A request that did not end in an acknowledgment or a read: its outcome in words."""

    method: str
    analysis_id: str
    replica: str
    sent_at: float
    received_at: float
    status: int | None
    """None: no answer (a connection error, a timeout)."""
    detail: str
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """The verdicts of a ledger. Counts, and a few examples of each kind of trouble."""

    label: str
    seconds: float
    requests: int
    acknowledged: int
    reads: int
    failed: int
    """5xx other than 503, connection errors and timeouts, unexpected statuses."""
    unavailable: int
    """503 answers (the service says "later"), not counted as failed."""
    unavailable_without_retry_after: int
    unavailable_cached_reads: int
    """503s to GETs of ids that were written (so cached): reads that should have worked."""
    refused: int
    """Connection errors of requests sent after the cut-off (a replica being stopped)."""
    ids: int
    lost: int
    """Ids whose PostgreSQL version is lower than an acknowledged one."""
    stale: int
    """Reads returning a version older than one acknowledged more than ``bound`` s before
    the read was sent."""
    stale_within_bound: int
    max_staleness: float
    """The longest time, over all reads, between the acknowledgment of a version newer
    than what a read returned and the read's sending; 0.0 when no read was stale."""
    bound: float
    examples: tuple[str, ...] = ()

    def render(self) -> str:
        text = (
            f"{self.label}: {self.requests} requests in {self.seconds:.1f} s"
            f" ({self.acknowledged} acknowledged PUTs, {self.reads} answered GETs);"
            f" failed {self.failed}; 503 {self.unavailable}"
            f" (without Retry-After {self.unavailable_without_retry_after},"
            f" to cached reads {self.unavailable_cached_reads}); refused {self.refused};"
            f" lost {self.lost} of {self.ids} ids; stale {self.stale} beyond {self.bound:g} s"
            f" ({self.stale_within_bound} within); max staleness {self.max_staleness:.3f} s"
        )
        return "\n  ".join((text, *self.examples))


Timeline = dict[str, tuple[list[float], list[int]]]
"""Per id: acknowledgment times (ascending), and the highest version acknowledged by each."""


class Ledger:
    """Every acknowledged write and every read of a run, with the client's clock."""

    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self.reads: list[Read] = []
        self.others: list[Exchange] = []
        self.written: set[str] = set()
        """Ids ever acknowledged: a 404 or 503 for them is not what a reader may get."""
        self.started = time.monotonic()

    def ack(self, ack: Ack) -> None:
        self.acks.append(ack)
        self.written.add(ack.analysis_id)

    def acknowledged(self) -> dict[str, int]:
        """Each id's highest acknowledged version."""
        best: dict[str, int] = {}
        for ack in self.acks:
            best[ack.analysis_id] = max(best.get(ack.analysis_id, 0), ack.version)
        return best

    def staleness(self, read: Read, timeline: Timeline | None = None) -> float:
        """How long before ``read`` was sent a newer version than it returned had been
        acknowledged (0.0 when none had). ``timeline``: :meth:`timeline`, made once for
        many reads."""
        if read.version is None:
            return 0.0
        if timeline is None:
            timeline = self.timeline()
        times, newest = timeline.get(read.analysis_id, ([], []))
        # newest[i] is the highest version acknowledged by times[i]: non-decreasing, so
        # the first acknowledgment of something newer than the read is a bisection.
        first = bisect.bisect_right(newest, read.version)
        if first == len(times) or times[first] >= read.sent_at:
            return 0.0
        return read.sent_at - times[first]

    def timeline(self) -> Timeline:
        """Per id, the acknowledgment times in order and the highest version acknowledged
        by each of them."""
        by_id: dict[str, list[Ack]] = defaultdict(list)
        for ack in self.acks:
            by_id[ack.analysis_id].append(ack)
        timeline: Timeline = {}
        for analysis_id, acks in by_id.items():
            acks.sort(key=lambda a: a.acked_at)
            times = [a.acked_at for a in acks]
            newest = list(itertools.accumulate((a.version for a in acks), max))
            timeline[analysis_id] = (times, newest)
        return timeline

    async def summarize(
        self,
        bed: FaultBed,
        label: str,
        *,
        bound: float,
        refused_after: float | None = None,
    ) -> Summary:
        """The verdicts; ``refused_after``: connection errors of requests sent from then on
        (the replica was being stopped) count as refused, not failed."""
        examples: list[str] = []
        failed = unavailable = no_retry_after = cached_503 = refused = 0
        for other in self.others:
            if other.status == 503:
                unavailable += 1
                no_retry_after += other.retry_after is None
                if other.method == "GET" and other.analysis_id in self.written:
                    cached_503 += 1
                    examples.append(f"503 to a cached read: {other}")
                elif other.retry_after is None:
                    examples.append(f"503 without Retry-After: {other}")
            elif (
                refused_after is not None
                and other.status is None
                and other.sent_at >= refused_after
            ):
                refused += 1
            else:
                failed += 1
                examples.append(f"failed: {other}")
        timeline = self.timeline()
        stale = within = 0
        worst = 0.0
        for read in self.reads:
            late = self.staleness(read, timeline)
            if late > 0:
                worst = max(worst, late)
                if late > bound:
                    stale += 1
                    examples.append(f"stale by {late:.3f} s: {read}")
                else:
                    within += 1
        acknowledged = self.acknowledged()
        stored = await bed.stored_versions(acknowledged)
        lost = {i: (v, stored.get(i)) for i, v in acknowledged.items() if stored.get(i, 0) < v}
        examples += [
            f"lost: {i} acknowledged v{v}, PostgreSQL has {s}" for i, (v, s) in lost.items()
        ]
        return Summary(
            label=label,
            seconds=time.monotonic() - self.started,
            requests=len(self.acks) + len(self.reads) + len(self.others),
            acknowledged=len(self.acks),
            reads=len(self.reads),
            failed=failed,
            unavailable=unavailable,
            unavailable_without_retry_after=no_retry_after,
            unavailable_cached_reads=cached_503,
            refused=refused,
            ids=len(acknowledged),
            lost=len(lost),
            stale=stale,
            stale_within_bound=within,
            max_staleness=worst,
            bound=bound,
            examples=tuple(examples[:8]),
        )


# --- the load driver -----------------------------------------------------------------------


class LoadDriver:
    """Concurrent clients doing PUTs (a JSON document holding a counter) and GETs, each
    recorded in a :class:`Ledger`. Use it as ``async with``: it owns the HTTP client.

    ``write_to`` and ``read_from`` are the replicas PUTs and GETs go to (each request
    picks one at random), so a scenario can write on one replica and read on another.
    A replica's address is read at every request: a stopped replica gets connection
    errors, which the ledger can count as refused rather than failed.
    """

    def __init__(
        self,
        ledger: Ledger,
        ids: Sequence[str],
        *,
        write_to: Sequence[ServiceProcess],
        read_from: Sequence[ServiceProcess],
        concurrency: int,
        write_share: float = 0.3,
        cold_ids: Sequence[str] = (),
        pause: float = 0.005,
    ) -> None:
        self.ledger = ledger
        self.ids = list(ids)
        self.cold_ids = list(cold_ids)
        """Ids only ever read (never written): 404, or 503 without the database."""
        self.write_to = list(write_to)
        self.read_from = list(read_from)
        self.concurrency = concurrency
        self.write_share = write_share
        self.pause = pause
        self._counter = itertools.count(1)
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        limits = httpx.Limits(
            max_connections=self.concurrency + 8, max_keepalive_connections=self.concurrency + 8
        )
        self._client = httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT,
            limits=limits,
            # Identity: the ETag is then the bare version, whatever the size.
            headers={"accept-encoding": "identity"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "use the driver as `async with`"
        return self._client

    def document(self, analysis_id: str) -> bytes:
        """A new document for ``analysis_id``: the counter tells writes apart."""
        return orjson.dumps({"analysis_id": analysis_id, "counter": next(self._counter)})

    async def seed(self, replica: ServiceProcess | None = None) -> None:
        """Write every id once (so every read has something to find); each must be acked."""
        target = replica or self.write_to[0]
        await asyncio.gather(*(self.put(target, analysis_id) for analysis_id in self.ids))
        missing = set(self.ids) - self.ledger.written
        assert not missing, f"seeding failed for {sorted(missing)[:5]}: {self.ledger.others[:5]}"

    async def put(
        self,
        replica: ServiceProcess,
        analysis_id: str,
        content: bytes | AsyncIterator[bytes] | None = None,
    ) -> Ack | Exchange:
        """PUT a document (``content``, default a new one); the Ack, if acknowledged."""
        sent = time.monotonic()
        try:
            response = await self.client.put(
                f"{replica.url}/results/{analysis_id}",
                content=self.document(analysis_id) if content is None else content,
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return self._other("PUT", analysis_id, replica, sent, None, repr(exc))
        received = time.monotonic()
        version = version_of(response)
        if response.status_code in (200, 201) and version is not None:
            ack = Ack(analysis_id, version, sent, received, replica.name)
            self.ledger.ack(ack)
            return ack
        return self._answered("PUT", analysis_id, replica, sent, response)

    async def get(self, replica: ServiceProcess, analysis_id: str) -> Read | Exchange:
        """GET an id; the Read when it was answered 200 (or 404 for an id never written)."""
        sent = time.monotonic()
        try:
            response = await self.client.get(f"{replica.url}/results/{analysis_id}")
        except httpx.HTTPError as exc:
            return self._other("GET", analysis_id, replica, sent, None, repr(exc))
        received = time.monotonic()
        status = response.status_code
        if status == 200 or (status == 404 and analysis_id not in self.ledger.written):
            version = version_of(response) if status == 200 else None
            read = Read(analysis_id, status, version, sent, received, replica.name)
            self.ledger.reads.append(read)
            return read
        return self._answered("GET", analysis_id, replica, sent, response)

    def load(self) -> AbstractAsyncContextManager[None]:
        """``async with driver.load():`` the mixed load runs for the block's duration.

        On the way out no new request starts and those in flight are awaited (each
        worker finishes the one it is in), so the ledger is complete afterwards.
        """
        return self._load()

    @asynccontextmanager
    async def _load(self) -> AsyncIterator[None]:
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(self._worker(stop, random.Random(n)), name=f"load worker {n}")
            for n in range(self.concurrency)
        ]
        try:
            yield
        finally:
            stop.set()
            done = await asyncio.gather(*workers, return_exceptions=True)
            errors = [d for d in done if isinstance(d, BaseException)]
            if errors:
                raise errors[0]

    async def _worker(self, stop: asyncio.Event, rng: random.Random) -> None:
        readable = self.ids + self.cold_ids
        while not stop.is_set():
            outcome: Ack | Read | Exchange
            if rng.random() < self.write_share:
                outcome = await self.put(rng.choice(self.write_to), rng.choice(self.ids))
            else:
                outcome = await self.get(rng.choice(self.read_from), rng.choice(readable))
            # A paced client: the machine has two cores, and a driver that saturates them
            # would measure its own queueing rather than the service. A refused connection
            # answers at once, so after one the client waits longer rather than spin.
            unanswered = isinstance(outcome, Exchange) and outcome.status is None
            await asyncio.sleep(self.pause * 10 if unanswered else self.pause)

    def _answered(
        self,
        method: str,
        analysis_id: str,
        replica: ServiceProcess,
        sent: float,
        response: httpx.Response,
    ) -> Exchange:
        return self._other(
            method,
            analysis_id,
            replica,
            sent,
            response.status_code,
            response.text[:200],
            response.headers.get("retry-after"),
        )

    def _other(
        self,
        method: str,
        analysis_id: str,
        replica: ServiceProcess,
        sent: float,
        status: int | None,
        detail: str,
        retry_after: str | None = None,
    ) -> Exchange:
        received = time.monotonic()
        exchange = Exchange(
            method, analysis_id, replica.name, sent, received, status, detail, retry_after
        )
        self.ledger.others.append(exchange)
        return exchange


def fresh_ids(prefix: str, count: int) -> list[str]:
    """``count`` analysis ids no other run uses."""
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{n:04d}" for n in range(count)]


# --- the soak's load and its connection count ------------------------------------------


ACCEPT_ENCODINGS = (
    "identity",
    "gzip",
    "br",
    "zstd",
    "gzip, deflate, br, zstd",
    "br;q=0.5, gzip;q=1.0",
    "*",
    "identity;q=0, *;q=0",
    "",
)
"""What the soak's readers ask for: each coding, lists with and without q-values, and a
client refusing everything (it gets identity): every cached representation gets made."""


class VariedLoadDriver(LoadDriver):
    """The :class:`LoadDriver`'s load, with documents and reads like real ones.

    A memory soak needs what the plain driver avoids: documents from a hundred bytes to
    ``max_size``, half of them compressible, so L1's byte budget fills and evicts, and
    reads that negotiate every coding and revalidate with If-None-Match, so each
    result's compressed bodies are made, kept and dropped. Every 200 is decoded (httpx
    undoes the coding) and must be the id's document; a 304 must carry the ETag, whose
    version is then what the read returned. Anything else is recorded as failed.
    """

    def __init__(
        self,
        ledger: Ledger,
        ids: Sequence[str],
        *,
        write_to: Sequence[ServiceProcess],
        read_from: Sequence[ServiceProcess],
        concurrency: int,
        max_size: int = 100_000,
        seed: int = 0,
    ) -> None:
        super().__init__(
            ledger, ids, write_to=write_to, read_from=read_from, concurrency=concurrency
        )
        self.max_size = max_size
        self._rng = random.Random(seed)
        self._tags: dict[tuple[str, str], str] = {}
        """The last ETag seen per id and Accept-Encoding: what If-None-Match sends."""

    def document(self, analysis_id: str) -> bytes:
        """A new document of log-uniform size up to ``max_size``: repeated words (they
        compress tenfold) or base64 of random bytes (barely), half and half."""
        rng = self._rng
        size = int(10 ** rng.uniform(2.0, math.log10(self.max_size)))
        if rng.random() < 0.5:
            filler = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
        else:
            filler = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
        counter = next(self._counter)
        return orjson.dumps({"analysis_id": analysis_id, "counter": counter, "filler": filler})

    async def get(self, replica: ServiceProcess, analysis_id: str) -> Read | Exchange:
        """GET with a random Accept-Encoding, and half the time the ETag last seen for it
        in If-None-Match (sometimes weak, sometimes ``*``)."""
        rng = self._rng
        encoding = rng.choice(ACCEPT_ENCODINGS)
        headers = {"accept-encoding": encoding}
        tag = self._tags.get((analysis_id, encoding))
        if tag is not None and rng.random() < 0.5:
            headers["if-none-match"] = rng.choice((tag, tag, tag, f"W/{tag}", "*"))
        sent = time.monotonic()
        try:
            response = await self.client.get(
                f"{replica.url}/results/{analysis_id}", headers=headers
            )
        except httpx.HTTPError as exc:
            return self._other("GET", analysis_id, replica, sent, None, repr(exc))
        received = time.monotonic()
        status = response.status_code
        version = version_of(response)
        if status == 200 and version is not None:
            try:
                kept = orjson.loads(response.content).get("analysis_id")
            except orjson.JSONDecodeError as exc:
                coding = response.headers.get("content-encoding")
                kept = f"an undecodable body ({exc}; content-encoding {coding})"
            if kept != analysis_id:
                return self._other("GET", analysis_id, replica, sent, status, f"body of {kept}")
            self._tags[analysis_id, encoding] = response.headers["etag"]
        elif status == 304 and "if-none-match" in headers and version is not None:
            pass
        elif not (status == 404 and analysis_id not in self.ledger.written):
            return self._answered("GET", analysis_id, replica, sent, response)
        read = Read(analysis_id, status, version, sent, received, replica.name)
        self.ledger.reads.append(read)
        return read


def open_connections(pid: int, port: int) -> int:
    """TCP connections to ``port`` (accepted ones, not the listener) that process ``pid``
    still holds a descriptor of: what clients cost the process, whatever the kernel
    still keeps of connections the process has closed."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                columns = line.split()
                local, state, inode = columns[1], columns[3], columns[9]
                listening = state == "0A"
                if int(local.rpartition(":")[2], 16) == port and not listening and inode in inodes:
                    count += 1
    return count
