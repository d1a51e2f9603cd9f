"""Results through real shared caches: Varnish and nginx's ``proxy_cache`` in front of a real
``service serve``.

The service's promise to a cache downstream is in its headers (``service/api/caching.py``):
result reads say ``Cache-Control: no-cache`` unless an operator sets ``HTTP_MAX_AGE`` and
its kin, everything else says ``no-store``. Unit tests can only check that the headers are
sent; whether they keep a real cache from showing a client a version that an acknowledged
write replaced depends on how that cache reads them. So each test here starts the service,
a private ``varnishd`` and a private ``nginx`` (each in a temporary directory, each
terminated and reaped afterwards) and talks to the service through them.

Both caches run with a default lifetime for answers that say nothing about caching
(Varnish's ``default_ttl`` of 120 s; ``proxy_cache_valid 200 404 120s`` for nginx, as an
operator would set it), so the service's headers are the only thing that keeps an old
version or a 404 out of their stores. Neither serves a stale answer on its own account
(Varnish's ``default_grace`` is 0, nginx has no ``proxy_cache_use_stale updating``), so
stale answers come from the service's ``stale-while-revalidate`` alone.

Each cache also serves ``/ignoring-policy/<path>``: the same ``<path>`` of the same
service with the service's ``Cache-Control`` removed before the cache decides, which is
what the cache does with a service that sends none. The control test shows that path
serving an old version and a stale 404 after acknowledged writes, so the other tests'
assertions hold because of the service's headers and would fail without them.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import pytest

from tests.helpers import forget_prefix, free_port, get_or_zero, parse, unique_id, unique_prefix
from tests.support.server import RunningService, running_service, stop_process, wait_healthy

pytestmark = [pytest.mark.tools, pytest.mark.slow]

Kind = Literal["varnish", "nginx"]
Policy = Literal["default", "stale-while-revalidate"]
CACHES: tuple[Kind, ...] = ("varnish", "nginx")

STARTUP_TIMEOUT = 30.0
"""Seconds a cache gets to answer through to the service (Varnish compiles its VCL first)."""
STOP_TIMEOUT = 10.0
"""Seconds a cache gets after SIGTERM before it is killed."""
WAIT = 5.0
"""Seconds to wait for something a cache does in the background."""

MAX_AGE = 1
STALE_WHILE_REVALIDATE = 30
SWR_CONTROL = f"max-age={MAX_AGE}, stale-while-revalidate={STALE_WHILE_REVALIDATE}"
EXPIRED_AFTER: dict[Kind, float] = {"varnish": MAX_AGE + 0.3, "nginx": MAX_AGE + 1.2}
"""Seconds after a cache stored an answer until it certainly treats it as expired. nginx
counts freshness in whole seconds and expires an answer only once the second after its
last fresh one has begun, so max-age=1 may last almost two seconds there."""

ENDPOINT = "/results/{analysis_id}"
IGNORING = "/ignoring-policy"
"""Path prefix under which a cache drops the service's Cache-Control before storing."""
ETAG = re.compile(r'^(?:W/)?"(\d+)(?:-[a-z]+)?"$')
"""A result's ETag as the service makes it (``"7"``, ``"7-gzip"``), maybe weakened by a cache."""

VCL = """\
vcl 4.1;

backend service {
    .host = "127.0.0.1";
    .port = "@BACKEND_PORT@";
}

sub vcl_recv {
    if (req.url ~ "^@IGNORING@/") {
        set req.http.X-Ignore-Policy = "1";
    } else {
        unset req.http.X-Ignore-Policy;
    }
}

sub vcl_backend_fetch {
    set bereq.url = regsub(bereq.url, "^@IGNORING@/", "/");
}

sub vcl_backend_response {
    # beresp.ttl is already computed here, from headers without max-age: default_ttl.
    # Without Cache-Control the builtin VCL that follows has nothing to refuse.
    if (bereq.http.X-Ignore-Policy) {
        unset beresp.http.Cache-Control;
    }
}
"""

NGINX_CONF = """\
@USER@
worker_processes 1;
error_log @SCRATCH@/error.log notice;
pid @SCRATCH@/nginx.pid;

events {
    worker_connections 128;
}

http {
    access_log @SCRATCH@/access.log;
    client_body_temp_path @SCRATCH@/client_body;
    proxy_temp_path @SCRATCH@/proxy;
    fastcgi_temp_path @SCRATCH@/fastcgi;
    uwsgi_temp_path @SCRATCH@/uwsgi;
    scgi_temp_path @SCRATCH@/scgi;
    proxy_cache_path @SCRATCH@/cache keys_zone=results:1m;

    upstream service {
        server 127.0.0.1:@BACKEND_PORT@;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:@PORT@;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_cache results;
        proxy_cache_revalidate on;
        proxy_cache_background_update on;
        proxy_cache_valid 200 404 120s;
        add_header X-Cache-Status $upstream_cache_status always;

        location / {
            proxy_pass http://service;
        }

        location @IGNORING@/ {
            proxy_ignore_headers Cache-Control Expires;
            proxy_pass http://service/;
        }
    }
}
"""

NGINX_FROM_STORE = frozenset({"HIT", "STALE", "UPDATING"})
"""``$upstream_cache_status`` values of answers nginx gave without asking the service."""
NGINX_STALE = frozenset({"STALE", "UPDATING"})


# --- the caches -----------------------------------------------------------------------------


def program(name: str) -> str | None:
    """The path of ``name`` on PATH or in the sbin directories, where Debian installs it."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


@dataclass(frozen=True)
class SharedCache:
    """A running cache in front of the service: its URL, its process, and how it says
    where an answer came from."""

    kind: Kind
    url: str
    process: asyncio.subprocess.Process
    output: Callable[[], str]

    def from_store(self, response: httpx.Response) -> bool:
        """Whether the cache answered from its store, without asking the service.

        Varnish's ``X-Varnish`` names the transaction of the request, then, on a hit, the
        one that stored the object; nginx says it in ``$upstream_cache_status``.
        """
        if self.kind == "varnish":
            return len(response.headers["x-varnish"].split()) == 2
        return response.headers.get("x-cache-status") in NGINX_FROM_STORE

    def stale(self, response: httpx.Response) -> bool:
        """Whether the answer came from the store past its freshness lifetime (max-age)."""
        if self.kind == "varnish":
            return self.from_store(response) and int(response.headers["age"]) >= MAX_AGE
        return response.headers.get("x-cache-status") in NGINX_STALE

    def describe(self, response: httpx.Response) -> str:
        """The headers that tell how the cache answered, for assertion messages."""
        names = ("etag", "cache-control", "age", "x-varnish", "x-cache-status", "cache-status")
        shown = {name: response.headers.get(name) for name in names if name in response.headers}
        return f"{self.kind}: {response.status_code} {shown}"


def read_text(*paths: Path) -> str:
    """What the files at ``paths`` hold so far (a cache's logs), for failure messages."""
    return "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')}" for path in paths if path.exists()
    )


@asynccontextmanager
async def running_cache(
    kind: Kind, command: Sequence[str], scratch: Path, url: str, logs: Sequence[Path]
) -> AsyncIterator[SharedCache]:
    """Run the cache ``command`` (output to ``scratch``/output.log) until ``url``/healthz
    answers 200 through it, failing with its output and ``logs`` if it does not; yield
    it. Terminated and reaped on exit, also when the body failed."""
    output_path = scratch / "output.log"

    def output() -> str:
        return read_text(output_path, *logs)

    with output_path.open("wb") as output_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output_file,
            stderr=asyncio.subprocess.STDOUT,
            cwd=scratch,
        )
    try:
        await wait_healthy(url, process, STARTUP_TIMEOUT, name=command[0], output=output)
        yield SharedCache(kind, url, process, output)
    finally:
        await stop_process(process, STOP_TIMEOUT)


@asynccontextmanager
async def running_varnish(varnishd: str, backend_port: int) -> AsyncIterator[SharedCache]:
    """A private varnishd in front of the service on ``backend_port``.

    ``-j none``: the default jail switches to the ``varnish`` user when started as root,
    and that user cannot enter a private temporary directory. ``default_ttl=120`` is
    Varnish's own default, spelled out because the control test relies on it.
    ``default_grace=0``: by default Varnish serves an expired object for 10 s more while
    it fetches a new one, whatever the answer said, and the stale-while-revalidate test
    would pass without the service's directive. Varnish maps ``stale-while-revalidate``
    to grace.
    """
    scratch = Path(tempfile.mkdtemp(prefix="svc-varnish-"))
    try:
        port = free_port()
        vcl = scratch / "results.vcl"
        vcl.write_text(
            VCL.replace("@BACKEND_PORT@", str(backend_port)).replace("@IGNORING@", IGNORING)
        )
        command = [
            varnishd,
            "-F",
            "-j",
            "none",
            "-n",
            str(scratch / "work"),
            "-a",
            f"127.0.0.1:{port}",
            "-T",
            "127.0.0.1:0",
            "-f",
            str(vcl),
            "-s",
            "malloc,32m",
            "-p",
            "default_ttl=120",
            "-p",
            "default_grace=0",
            "-p",
            "thread_pools=1",
            "-p",
            "thread_pool_min=10",
        ]
        url = f"http://127.0.0.1:{port}"
        async with running_cache("varnish", command, scratch, url, ()) as cache:
            yield cache
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@asynccontextmanager
async def running_nginx(nginx: str, backend_port: int) -> AsyncIterator[SharedCache]:
    """A private nginx with a ``proxy_cache`` in front of the service on ``backend_port``.

    ``proxy_cache_background_update`` lets nginx act on ``stale-while-revalidate``: serve
    the expired answer while a subrequest fetches the new one. ``proxy_cache_use_stale
    updating`` is left out on purpose: it serves stale answers during an update whatever
    the service said, and the stale-while-revalidate test would pass without the
    service's directive. ``proxy_cache_revalidate`` makes nginx refresh an expired answer
    with a conditional request. Started as root, the master would run its workers as
    ``nobody``, who cannot use the private directory: they run as the current user.
    """
    scratch = Path(tempfile.mkdtemp(prefix="svc-nginx-"))
    try:
        port = free_port()
        user = ""
        if os.geteuid() == 0:
            names = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
            user = "user {} {};".format(*names)
        conf = scratch / "nginx.conf"
        conf.write_text(
            NGINX_CONF.replace("@USER@", user)
            .replace("@SCRATCH@", str(scratch))
            .replace("@BACKEND_PORT@", str(backend_port))
            .replace("@PORT@", str(port))
            .replace("@IGNORING@", IGNORING)
        )
        error_log = scratch / "error.log"
        command = [
            nginx,
            "-p",
            f"{scratch}/",
            "-c",
            str(conf),
            "-e",
            str(error_log),
            "-g",
            "daemon off;",
        ]
        url = f"http://127.0.0.1:{port}"
        async with running_cache("nginx", command, scratch, url, (error_log,)) as cache:
            yield cache
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Stack:
    """One service and the caches in front of it."""

    service: RunningService
    caches: dict[Kind, SharedCache] = field(default_factory=dict)
    missing: dict[Kind, str] = field(default_factory=dict)

    def cache(self, kind: Kind) -> SharedCache:
        """The cache of ``kind``; the test fails when its program is not installed, or
        when it or the service is no longer running (an earlier test may have ended it)."""
        if kind in self.missing:
            pytest.fail(self.missing[kind], pytrace=False)
        cache = self.caches[kind]
        for name, process, output in (
            ("the service", self.service.process, self.service.log),
            (kind, cache.process, cache.output),
        ):
            if process.returncode is not None:
                pytest.fail(f"{name} exited with {process.returncode}; its output:\n{output()}")
        return cache


PROGRAMS: dict[Kind, tuple[str, str]] = {
    "varnish": ("varnishd", "varnish"),
    "nginx": ("nginx", "nginx-light"),
}


@asynccontextmanager
async def running_stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    """The service with ``env``, and every installed cache in front of it."""
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(running_service(env))
        result = Stack(service)
        starters = {"varnish": running_varnish, "nginx": running_nginx}
        for kind in CACHES:
            name, package = PROGRAMS[kind]
            path = program(name)
            if path is None:
                result.missing[kind] = (
                    f"{name} is not installed: install it (apt-get install {package}) to run "
                    "the shared-cache tests"
                )
                continue
            result.caches[kind] = await stack.enter_async_context(
                starters[kind](path, service.port)
            )
        yield result


@pytest.fixture(scope="module")
async def stacks(pg_url: str, redis_url: str) -> AsyncIterator[dict[Policy, Stack]]:
    """A service with the default policy and one with stale-while-revalidate, each behind
    every cache; shared by the module's tests, which use ids of their own."""
    prefix = unique_prefix("shc")
    base = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CACHE_PREFIX": prefix}
    swr = {
        **base,
        "HTTP_MAX_AGE": str(MAX_AGE),
        "HTTP_STALE_WHILE_REVALIDATE": str(STALE_WHILE_REVALIDATE),
    }
    try:
        async with running_stack(base) as default, running_stack(swr) as stale:
            yield {"default": default, "stale-while-revalidate": stale}
    finally:
        await forget_prefix(prefix)


# --- requests -------------------------------------------------------------------------------


@asynccontextmanager
async def clients(
    stack: Stack, cache: SharedCache
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(straight to the service, through ``cache``)."""
    async with (
        httpx.AsyncClient(base_url=stack.service.url, timeout=10) as direct,
        httpx.AsyncClient(base_url=cache.url, timeout=10) as through,
    ):
        yield direct, through


Document = dict[str, object]


def document(analysis_id: str, version: int, *, large: bool = False) -> Document:
    """A result naming its version; ``large`` makes it big enough to be compressed."""
    return {"id": analysis_id, "version": version, "pad": "x" * 2000 if large else ""}


async def put(client: httpx.AsyncClient, path: str, body: Document, version: int) -> None:
    """PUT ``body``; the service must acknowledge it as ``version``."""
    response = await client.put(path, json=body)
    assert response.status_code in (200, 201), response.text
    assert response.headers["etag"] == f'"{version}"', response.headers
    assert response.json()["version"] == version


def etag_version(response: httpx.Response) -> int:
    """The version an answer's ETag names, whatever coding suffix or weakening it has."""
    match = ETAG.match(response.headers.get("etag", ""))
    assert match is not None, response.headers
    return int(match.group(1))


def assert_version(
    cache: SharedCache,
    response: httpx.Response,
    body: Document,
    version: int,
    *,
    exact: bool = True,
) -> None:
    """``response`` is a 200 with ``body``, version ``version``; with ``exact``, its ETag is
    the identity one, ``"<version>"``."""
    seen = cache.describe(response)
    assert response.status_code == 200, seen
    assert etag_version(response) == version, (
        f"version {version} expected through the cache: {seen}"
    )
    if exact:
        assert response.headers["etag"] == f'"{version}"', seen
    assert response.json() == body, seen


async def service_reads(direct: httpx.AsyncClient) -> dict[str, float]:
    """How many reads of a result the service answered so far, by status class."""
    samples = parse((await direct.get("/metrics")).text)
    return {
        status: get_or_zero(
            samples, "responses_total", endpoint=ENDPOINT, method="GET", status_class=status
        )
        for status in ("2xx", "3xx", "4xx")
    }


async def wait_for_reads(
    direct: httpx.AsyncClient, before: dict[str, float], expected: dict[str, int]
) -> None:
    """Wait until the service has answered exactly ``expected`` more reads (by status class)
    than ``before``; fail on more, or when they have not all arrived within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        now = await service_reads(direct)
        delta = {status: int(now[status] - before[status]) for status in now}
        want = {status: expected.get(status, 0) for status in now}
        if delta == want:
            return
        over = any(delta[status] > want[status] for status in now)
        if over or time.monotonic() > deadline:
            raise AssertionError(f"the service answered {delta} reads, expected {want}")
        await asyncio.sleep(0.05)


# --- 1. the default policy ------------------------------------------------------------------


@pytest.mark.parametrize("kind", CACHES)
async def test_default_policy_never_serves_an_old_version_after_an_acknowledged_write(
    stacks: dict[Policy, Stack], kind: Kind
) -> None:
    """With the default ``no-cache``, a cache must ask the service before each reuse, so
    once a PUT is acknowledged no GET through the cache shows the version it replaced.

    Each round writes v1, reads it through the cache a few times, writes v2 (straight to
    the service, or through the cache) and then reads concurrently, with HEAD and with the
    client's own validators. That each read reached the service (counted by the service,
    and not a hit by the cache's own account) depends on the ``no-cache`` header: under
    ``/ignoring-policy/`` the same reads are hits and the old version is served (see the
    control test).
    """
    stack = stacks["default"]
    cache = stack.cache(kind)
    async with asyncio.timeout(30), clients(stack, cache) as (direct, through):
        for round_ in range(2):
            for put_through_cache in (False, True):
                for large in (False, True):
                    analysis_id = unique_id(f"shc-{kind}-{round_}")
                    path = f"/results/{analysis_id}"
                    writer = through if put_through_cache else direct
                    v1 = document(analysis_id, 1, large=large)
                    v2 = document(analysis_id, 2, large=large)
                    await put(writer, path, v1, 1)

                    before = await service_reads(direct)
                    for _ in range(3):
                        got = await through.get(path)
                        assert_version(cache, got, v1, 1, exact=not large)
                        assert not cache.from_store(got), cache.describe(got)
                        assert got.headers["cache-control"] == "no-cache", cache.describe(got)
                    await wait_for_reads(direct, before, {"2xx": 3})

                    await put(writer, path, v2, 2)
                    answers = await asyncio.gather(*(through.get(path) for _ in range(6)))
                    for got in answers:
                        assert_version(cache, got, v2, 2, exact=not large)
                        assert not cache.from_store(got), cache.describe(got)

                    head = await through.head(path)
                    assert head.status_code == 200, cache.describe(head)
                    assert etag_version(head) == 2, cache.describe(head)

                    old = await through.get(path, headers={"if-none-match": '"1"'})
                    assert_version(cache, old, v2, 2, exact=not large)
                    if not large:
                        # A 304, or v2 itself: nginx does not forward a client's
                        # validators while a cache is on, and sends 304s itself only
                        # for answers it may store.
                        current = await through.get(path, headers={"if-none-match": '"2"'})
                        if current.status_code != 304:
                            assert_version(cache, current, v2, 2)
                        assert current.headers["etag"] == '"2"', cache.describe(current)


# --- 2. stale-while-revalidate --------------------------------------------------------------


@pytest.mark.parametrize("kind", CACHES)
async def test_stale_while_revalidate_serves_the_stored_version_then_the_new_one(
    stacks: dict[Policy, Stack], kind: Kind
) -> None:
    """With ``HTTP_MAX_AGE`` and ``HTTP_STALE_WHILE_REVALIDATE`` an operator trades a bounded
    staleness for load: the cache answers from its store while the answer is fresh; once
    it is past max-age it serves the stored version while it asks the service in the
    background, and then the new one. An unchanged result is refreshed with a 304.
    """
    stack = stacks["stale-while-revalidate"]
    cache = stack.cache(kind)
    async with asyncio.timeout(30), clients(stack, cache) as (direct, through):
        analysis_id = unique_id(f"shc-swr-{kind}")
        path = f"/results/{analysis_id}"
        v1, v2 = document(analysis_id, 1), document(analysis_id, 2)
        await put(direct, path, v1, 1)

        # Fresh: stored on the first read, then served from the store.
        before = await service_reads(direct)
        first = await through.get(path)
        stored_at = time.monotonic()
        assert_version(cache, first, v1, 1)
        assert first.headers["cache-control"] == SWR_CONTROL, cache.describe(first)
        assert not cache.from_store(first), cache.describe(first)
        for _ in range(3):
            hit = await through.get(path)
            assert_version(cache, hit, v1, 1)
            assert cache.from_store(hit), cache.describe(hit)
        assert time.monotonic() - stored_at < MAX_AGE, "too slow to see a fresh hit"
        await wait_for_reads(direct, before, {"2xx": 1})

        # Past max-age, a new version is written: the stored one is served while the
        # cache asks the service in the background, then the new one.
        await asyncio.sleep(stored_at + EXPIRED_AFTER[kind] - time.monotonic())
        await put(direct, path, v2, 2)
        before = await service_reads(direct)
        seen: list[httpx.Response] = [await through.get(path)]
        assert_version(cache, seen[0], v1, 1)
        assert cache.stale(seen[0]), cache.describe(seen[0])
        deadline = time.monotonic() + WAIT
        while sum(etag_version(r) == 2 for r in seen) < 3:
            assert time.monotonic() < deadline, [cache.describe(r) for r in seen]
            await asyncio.sleep(0.02)
            seen.append(await through.get(path))
        versions = [etag_version(r) for r in seen]
        switched = versions.index(2)
        assert versions == [1] * switched + [2] * (len(versions) - switched), versions
        renewed_at = time.monotonic()
        for response in seen[:switched]:
            assert_version(cache, response, v1, 1)
            assert cache.from_store(response), cache.describe(response)
        for response in seen[switched:]:
            assert_version(cache, response, v2, 2)
        assert cache.from_store(seen[-1]), cache.describe(seen[-1])
        await wait_for_reads(direct, before, {"2xx": 1})

        # Past max-age again, unchanged: served from the store, refreshed with a 304.
        await asyncio.sleep(renewed_at + EXPIRED_AFTER[kind] - time.monotonic())
        before = await service_reads(direct)
        expired = await through.get(path)
        assert_version(cache, expired, v2, 2)
        assert cache.stale(expired), cache.describe(expired)
        await wait_for_reads(direct, before, {"3xx": 1})
        refreshed = await through.get(path)
        assert_version(cache, refreshed, v2, 2)
        assert cache.from_store(refreshed), cache.describe(refreshed)
        assert not cache.stale(refreshed), cache.describe(refreshed)


# --- 3. errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["default", "stale-while-revalidate"])
@pytest.mark.parametrize("kind", CACHES)
async def test_a_404_is_not_stored(stacks: dict[Policy, Stack], kind: Kind, policy: Policy) -> None:
    """A 404 says ``no-store`` under any policy: otherwise a cache would keep it for its
    default lifetime and hide a result created right afterwards. Under
    stale-while-revalidate the same cache then stores the 200: it keeps what it may."""
    stack = stacks[policy]
    cache = stack.cache(kind)
    async with asyncio.timeout(20), clients(stack, cache) as (direct, through):
        analysis_id = unique_id(f"shc-404-{kind}")
        path = f"/results/{analysis_id}"
        before = await service_reads(direct)
        for _ in range(2):
            missing = await through.get(path)
            assert missing.status_code == 404, cache.describe(missing)
            assert not cache.from_store(missing), cache.describe(missing)
            assert missing.headers["cache-control"] == "no-store", cache.describe(missing)
        await wait_for_reads(direct, before, {"4xx": 2})

        body = document(analysis_id, 1)
        await put(direct, path, body, 1)
        assert_version(cache, await through.get(path), body, 1)
        if policy == "stale-while-revalidate":
            again = await through.get(path)
            assert_version(cache, again, body, 1)
            assert cache.from_store(again), cache.describe(again)


# --- the control: a cache without the service's policy -----------------------------------


@pytest.mark.parametrize("kind", CACHES)
async def test_without_the_service_policy_a_cache_serves_an_old_version_and_a_404(
    stacks: dict[Policy, Stack], kind: Kind
) -> None:
    """The danger the service's headers avert, shown with the same caches and service.

    Under ``/ignoring-policy/`` the cache drops the service's Cache-Control before it
    decides, as if the service sent none; it then keeps a 200 and a 404 for its default
    lifetime and serves them after writes the service acknowledged. The other tests
    make the same requests without that prefix and see the new version, so they pass
    because of the service's headers and would fail without them.
    """
    stack = stacks["default"]
    cache = stack.cache(kind)
    async with asyncio.timeout(20), clients(stack, cache) as (direct, through):
        analysis_id = unique_id(f"shc-ctl-{kind}")
        path = f"/results/{analysis_id}"
        v1, v2 = document(analysis_id, 1), document(analysis_id, 2)
        await put(direct, path, v1, 1)
        first = await through.get(IGNORING + path)
        assert_version(cache, first, v1, 1)
        assert not cache.from_store(first), cache.describe(first)
        await put(direct, path, v2, 2)
        old = await through.get(IGNORING + path)
        assert_version(cache, old, v1, 1)
        assert cache.from_store(old), cache.describe(old)

        missing_id = unique_id(f"shc-ctl-404-{kind}")
        missing_path = f"/results/{missing_id}"
        assert (await through.get(IGNORING + missing_path)).status_code == 404
        await put(direct, missing_path, document(missing_id, 1), 1)
        hidden = await through.get(IGNORING + missing_path)
        assert hidden.status_code == 404, cache.describe(hidden)
        assert cache.from_store(hidden), cache.describe(hidden)
