"""Compression end to end on the real service: PostgreSQL, the app factory, uvicorn, curl.

A ~20 KB result is PUT, then read back in every coding: the bytes on the wire are
decoded here (never by the HTTP client), the ETag names the representation, a
conditional GET with that tag is a 304 carrying it, and once the background encoder
has run, the same read is answered from the pre-encoded bytes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from service.core.codings import CODINGS, DEFAULT_LEVELS, compress
from tests.helpers import ClientFactory, decode, serving, unique_id

TOKEN = "compression-tests-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


def result_document() -> bytes:
    """A result of about 20 KB."""
    rows = [
        {"sample": i, "label": f"s-{i:04d}", "value": i * 0.125, "flags": [i % 2, i % 5]}
        for i in range(290)
    ]
    data = json.dumps({"analysis": "compression", "rows": rows}).encode()
    assert 18_000 < len(data) < 22_000, len(data)
    return data


async def get_raw(
    client: httpx.AsyncClient, path: str, accept: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes]:
    """GET ``path`` with Accept-Encoding ``accept``: the response and its undecoded bytes."""
    request_headers = {"accept-encoding": accept, **(headers or {})}
    async with client.stream("GET", path, headers=request_headers) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, raw


async def put_result(client: httpx.AsyncClient) -> tuple[str, bytes]:
    """PUT a fresh ~20 KB result; its path and the identity body a GET returns."""
    path = f"/results/{unique_id('z')}"
    data = result_document()
    put = await client.put(path, content=data, headers=JSON)
    assert put.status_code == 201, put.text
    assert put.headers["etag"] == '"1"'
    response, identity = await get_raw(client, path, "identity")
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.headers["vary"] == "Accept-Encoding"
    assert json.loads(identity) == json.loads(data)  # stored in its own canonical form
    return path, identity


@pytest.mark.parametrize("coding", CODINGS)
async def test_each_coding_decodes_to_the_identity_body(
    make_client: ClientFactory, pg_url: str, coding: str
) -> None:
    """The bytes decode to exactly the identity body; the ETag names the coding."""
    async with make_client(database_url=pg_url) as client:
        path, identity = await put_result(client)
        response, raw = await get_raw(client, path, coding)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == coding
    assert response.headers["content-length"] == str(len(raw))
    assert response.headers["etag"] == f'"1-{coding}"'
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["content-type"] == "application/json"
    assert len(raw) < len(identity)
    assert decode(coding, raw) == identity


@pytest.mark.parametrize("coding", CODINGS)
async def test_if_none_match_with_the_encoded_tag_is_304(
    make_client: ClientFactory, pg_url: str, coding: str
) -> None:
    """The service's own If-None-Match check works through the suffix; the 304 keeps it."""
    async with make_client(database_url=pg_url) as client:
        path, _ = await put_result(client)
        first, _ = await get_raw(client, path, coding)
        tag = first.headers["etag"]
        assert tag == f'"1-{coding}"'
        response, raw = await get_raw(client, path, coding, {"if-none-match": tag})
    assert response.status_code == 304
    assert raw == b""
    assert response.headers["etag"] == tag
    assert response.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in response.headers


async def test_if_none_match_with_another_codings_tag_is_200(
    make_client: ClientFactory, pg_url: str
) -> None:
    """A br tag does not validate the gzip representation: 200 in gzip, with its own tag."""
    async with make_client(database_url=pg_url) as client:
        path, identity = await put_result(client)
        response, raw = await get_raw(client, path, "gzip", {"if-none-match": '"1-br"'})
    assert response.status_code == 200
    assert response.headers["etag"] == '"1-gzip"'
    assert decode("gzip", raw) == identity


@pytest.mark.parametrize("coding", CODINGS)
async def test_one_tag_names_one_byte_sequence_on_every_read_and_replica(
    make_client: ClientFactory, pg_url: str, coding: str
) -> None:
    """RFC 9110 section 8.8.1: the bytes under "1-<coding>" never change. The first read
    (which makes them), later L1 hits, and a second replica's first read all send
    ``compress(coding, level, body)`` at the configured level."""
    levels = {f"compression_{c}_level": level for c, level in DEFAULT_LEVELS.items()}
    async with make_client(database_url=pg_url, **levels) as client:
        path, identity = await put_result(client)
        sent = [await get_raw(client, path, coding) for _ in range(4)]
    async with make_client(database_url=pg_url, **levels) as other:
        sent.append(await get_raw(other, path, coding))
    expected = compress(coding, DEFAULT_LEVELS[coding], identity)
    for response, raw in sent:
        assert response.headers["etag"] == f'"1-{coding}"'
        assert response.headers["content-length"] == str(len(raw))
        assert raw == expected
    assert [r.headers["x-cache"] for r, _ in sent] == ["HIT"] * 4 + ["MISS"]


async def test_a_range_request_gets_identity_after_the_encoded_bytes_exist(
    make_client: ClientFactory, pg_url: str
) -> None:
    """Range turns compression off on every path, before and after the coded bytes are
    made (the README promises identity for Range)."""
    async with make_client(database_url=pg_url) as client:
        path, identity = await put_result(client)
        before, raw_before = await get_raw(client, path, "br", {"range": "bytes=0-9"})
        coded, _ = await get_raw(client, path, "br")
        assert coded.headers["content-encoding"] == "br"
        after, raw_after = await get_raw(client, path, "br", {"range": "bytes=0-9"})
    for response, raw in ((before, raw_before), (after, raw_after)):
        assert response.status_code == 200
        assert "content-encoding" not in response.headers
        assert response.headers["etag"] == '"1"'
        assert raw == identity


def curl_features() -> set[str] | None:
    """The Features line of ``curl -V`` in lower case; None without curl."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    version = subprocess.run([curl, "-V"], capture_output=True, text=True, check=True, timeout=10)
    for line in version.stdout.splitlines():
        if line.startswith("Features:"):
            return {feature.lower() for feature in line.split()[1:]}
    return set()


CURL_FEATURE = {"gzip": "libz", "br": "brotli", "zstd": "zstd"}


@pytest.mark.slow
@pytest.mark.tools
@pytest.mark.parametrize("coding", CODINGS)
async def test_curl_compressed_decodes_the_service_over_tcp(pg_url: str, coding: str) -> None:
    """``curl --compressed`` against uvicorn serving the app factory decodes each coding."""
    features = curl_features()
    if features is None:
        pytest.skip("curl is not installed")
    if CURL_FEATURE[coding] not in features:
        pytest.skip(
            f"this curl lacks the {CURL_FEATURE[coding]} feature, so it cannot decode {coding}"
        )
    app = create_app(Settings(database_url=pg_url))
    async with (
        serving(app, lifespan="on") as url,
        httpx.AsyncClient(base_url=url, timeout=5) as client,
    ):
        path, identity = await put_result(client)
        with tempfile.TemporaryDirectory(prefix="curl-") as scratch:
            head, out = Path(scratch, "headers"), Path(scratch, "body")
            process = await asyncio.create_subprocess_exec(
                "curl",
                "--silent",
                "--show-error",
                "--fail",
                "--compressed",
                "--header",
                f"Accept-Encoding: {coding}",
                "--dump-header",
                str(head),
                "--output",
                str(out),
                f"{url}{path}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await asyncio.wait_for(process.communicate(), 10)
            assert process.returncode == 0, stderr.decode()
            headers = head.read_text().lower().splitlines()
            decoded = out.read_bytes()
    assert f"content-encoding: {coding}" in headers
    assert decoded == identity
