"""The HTTP contract, on PostgreSQL and on the embedded SQLite (every test runs on both)."""

from __future__ import annotations

import asyncio
import gc
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import httpx
import pytest

from tests.helpers import ClientFactory, assert_problem, next_second, unique_id

JSON = {"content-type": "application/json"}


async def test_put_creates_then_replaces_with_versions(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    created = await client.put(f"/results/{rid}", json={"score": 0.5})
    assert created.status_code == 201
    assert created.headers["location"] == f"/results/{rid}"
    assert created.headers["etag"] == '"1"'
    body = created.json()
    assert body["analysis_id"] == rid
    assert body["version"] == 1
    assert body["updated_at"].endswith("Z")

    replaced = await client.put(f"/results/{rid}", json={"score": 0.75})
    assert replaced.status_code == 200
    assert replaced.json()["version"] == 2
    assert replaced.headers["etag"] == '"2"'
    assert "location" not in replaced.headers

    await next_second()
    got = await client.get(f"/results/{rid}")
    assert got.status_code == 200
    assert got.json() == {"score": 0.75}
    assert got.headers["etag"] == '"2"'
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-cache"] == "HIT"  # the write put version 2 in the cache
    parsedate_to_datetime(got.headers["last-modified"])


async def test_documents_round_trip_without_loss(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    raw = (
        b'{"big": 123456789012345678901234567890, "exact": 0.1,'
        b' "text": "\\u00e9\\ud83d\\ude00 \xc3\xa9",'
        b' "nested": {"list": [1, null, true, false, {"k": []}]}, "empty": {}}'
    )
    assert (await client.put(f"/results/{rid}", content=raw, headers=JSON)).status_code == 201
    got = await client.get(f"/results/{rid}")
    # Compare the text: json.loads would round the big integer the same way on both sides.
    assert "123456789012345678901234567890" in got.text
    document = got.json()
    assert document["text"] == "\u00e9\U0001f600 \u00e9"
    assert document["nested"] == {"list": [1, None, True, False, {"k": []}]}
    assert document["exact"] == 0.1
    assert document["empty"] == {}


async def test_head_has_the_headers_of_get_and_no_body(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    await client.put(f"/results/{rid}", json={"a": [1, 2, 3]})
    got = await client.get(f"/results/{rid}")
    head = await client.head(f"/results/{rid}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]
    assert head.headers["etag"] == got.headers["etag"]
    assert (await client.head(f"/results/{unique_id()}")).status_code == 404


async def test_if_none_match_gives_304(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    await client.put(f"/results/{rid}", json={"a": 1})
    for header in ('"1"', 'W/"1"', '"9", "1"', "*"):
        response = await client.get(f"/results/{rid}", headers={"if-none-match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == '"1"'
    assert (
        await client.get(f"/results/{rid}", headers={"if-none-match": '"2"'})
    ).status_code == 200


async def test_if_modified_since(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    await client.put(f"/results/{rid}", json={"a": 1})
    await next_second()
    last_modified = (await client.get(f"/results/{rid}")).headers["last-modified"]
    same = await client.get(f"/results/{rid}", headers={"if-modified-since": last_modified})
    assert same.status_code == 304
    earlier = format_datetime(parsedate_to_datetime(last_modified).replace(year=2000), usegmt=True)
    assert (
        await client.get(f"/results/{rid}", headers={"if-modified-since": earlier})
    ).status_code == 200
    garbage = await client.get(f"/results/{rid}", headers={"if-modified-since": "yesterday"})
    assert garbage.status_code == 200


async def test_if_match_guards_writes(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    missing = await client.put(f"/results/{rid}", json={"a": 1}, headers={"if-match": '"1"'})
    assert_problem(missing, 412)
    assert (await client.get(f"/results/{rid}")).status_code == 404

    await client.put(f"/results/{rid}", json={"a": 1})
    stale = await client.put(f"/results/{rid}", json={"a": 2}, headers={"if-match": '"7"'})
    assert_problem(stale, 412)
    weak = await client.put(f"/results/{rid}", json={"a": 2}, headers={"if-match": 'W/"1"'})
    assert_problem(weak, 412)
    assert (await client.get(f"/results/{rid}")).json() == {"a": 1}

    fresh = await client.put(f"/results/{rid}", json={"a": 3}, headers={"if-match": '"1"'})
    assert fresh.status_code == 200
    assert fresh.json()["version"] == 2
    anything = await client.put(f"/results/{rid}", json={"a": 4}, headers={"if-match": "*"})
    assert anything.status_code == 200
    several = await client.put(f"/results/{rid}", json={"a": 5}, headers={"if-match": '"3", "4"'})
    assert_problem(several, 400)


async def test_if_none_match_star_is_create_only(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    first = await client.put(f"/results/{rid}", json={"a": 1}, headers={"if-none-match": "*"})
    assert first.status_code == 201
    second = await client.put(f"/results/{rid}", json={"a": 2}, headers={"if-none-match": "*"})
    assert_problem(second, 412)
    assert (await client.get(f"/results/{rid}")).json() == {"a": 1}
    other = await client.put(f"/results/{rid}", json={"a": 2}, headers={"if-none-match": '"1"'})
    assert_problem(other, 400)


async def test_delete_then_recreate_never_reuses_a_version(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    await client.put(f"/results/{rid}", json={"a": 1})
    assert (await client.delete(f"/results/{rid}")).status_code == 204
    assert_problem(await client.get(f"/results/{rid}"), 404)
    assert_problem(await client.delete(f"/results/{rid}"), 404)
    again = await client.put(f"/results/{rid}", json={"a": 2})
    assert again.status_code == 201
    assert again.json()["version"] == 3  # 1 written, 2 the tombstone, 3 written again
    # A client holding the old ETag must not get 304 for the new content.
    assert (
        await client.get(f"/results/{rid}", headers={"if-none-match": '"1"'})
    ).status_code == 200


async def test_delete_with_if_match(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    await client.put(f"/results/{rid}", json={"a": 1})
    assert_problem(await client.delete(f"/results/{rid}", headers={"if-match": '"5"'}), 412)
    assert (await client.delete(f"/results/{rid}", headers={"if-match": '"1"'})).status_code == 204


async def test_list_pages_through_everything_in_order(client: httpx.AsyncClient) -> None:
    prefix = unique_id("list")
    ids = [f"{prefix}-{n:03d}" for n in range(25)]
    for rid in reversed(ids):
        assert (await client.put(f"/results/{rid}", json={"n": rid})).status_code == 201
    await client.delete(f"/results/{ids[3]}")
    seen: list[str] = []
    after = f"{prefix}-"  # just before the first of ours in byte order
    while True:
        page = (await client.get("/results", params={"limit": 7, "after": after})).json()
        mine = [item for item in page["items"] if item["analysis_id"].startswith(prefix)]
        seen += [item["analysis_id"] for item in mine]
        for item in mine:
            assert set(item) == {"analysis_id", "version", "created_at", "updated_at"}
        if page["next"] is None or len(mine) < len(page["items"]):
            break
        assert len(page["items"]) == 7
        after = page["next"]
    assert seen == [rid for rid in ids if rid != ids[3]]


async def test_list_default_and_bad_parameters(client: httpx.AsyncClient) -> None:
    response = await client.get("/results")
    assert response.status_code == 200
    assert set(response.json()) == {"items", "next"}
    for limit in ("0", "1001", "-1", "ten", "1.5", ""):
        assert_problem(await client.get("/results", params={"limit": limit}), 422)
    assert_problem(await client.get("/results", params={"after": "../etc"}), 422)


@pytest.mark.parametrize(
    "bad_id",
    ["..%2Fx", "a%2Fb", "x" * 129, "%C3%A9t%C3%A9", "a%20b", "a;b", "", "%2E%2E", "%00"],
)
async def test_bad_ids_are_422_on_every_method(client: httpx.AsyncClient, bad_id: str) -> None:
    path = f"/results/{bad_id}"
    assert_problem(await client.get(path), 422)
    assert_problem(await client.put(path, json={"a": 1}), 422)
    assert_problem(await client.delete(path), 422)


async def test_the_longest_id_and_every_allowed_character_work(client: httpx.AsyncClient) -> None:
    for rid in ("x" * 128, "A-Z_a.z-09", "a.b", "_"):
        assert (await client.put(f"/results/{rid}", json={"id": rid})).status_code in (200, 201)
        assert (await client.get(f"/results/{rid}")).json() == {"id": rid}


@pytest.mark.parametrize(
    "body",
    [b"{", b"", b"nope", b'{"a": 1} trailing', b"\xff\xfe{}", b'  {"a": [1, }', b'{"a": NaN}'],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    problem = assert_problem(
        await client.put(f"/results/{unique_id()}", content=body, headers=JSON), 400
    )
    assert problem["type"] == "/problems/malformed-json"
    assert "SELECT" not in problem["detail"]
    assert "INSERT" not in problem["detail"]


async def test_numbers_beyond_a_double_are_kept_exactly(
    make_client: ClientFactory, database_url: str
) -> None:
    """JSON allows any number: nothing is refused or rounded. JSONB keeps it as numeric
    (PostgreSQL parses the body, not Python); SQLite keeps the text as sent. NaN and
    Infinity are not JSON and stay refused."""
    async with make_client(database_url=database_url) as client:
        rid = unique_id()
        body = b'{"huge": 1e400, "long": 123456789012345678901234567890.5}'
        assert (await client.put(f"/results/{rid}", content=body, headers=JSON)).status_code == 201
        read = await client.get(f"/results/{rid}", headers={"accept-encoding": "identity"})
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            refused = await client.put(
                f"/results/{rid}", content=b'{"x": ' + constant + b"}", headers=JSON
            )
            assert_problem(refused, 400)
    assert read.content.startswith((b'{"huge": 1', b'{"huge": 1e400'))
    assert b"123456789012345678901234567890.5" in read.content


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
async def test_json_that_is_not_an_object_is_422(client: httpx.AsyncClient, body: bytes) -> None:
    rid = unique_id()
    assert_problem(await client.put(f"/results/{rid}", content=body, headers=JSON), 422)
    assert (await client.get(f"/results/{rid}")).status_code == 404


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
async def test_a_body_not_declared_json_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.put(f"/results/{unique_id()}", content=b"{}", headers=headers)
    assert_problem(response, 415)


async def test_json_media_type_variants_are_accepted(client: httpx.AsyncClient) -> None:
    for content_type in (
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.x+json",
    ):
        response = await client.put(
            f"/results/{unique_id()}", content=b"{}", headers={"content-type": content_type}
        )
        assert response.status_code == 201, content_type


async def test_oversize_body_is_413_by_content_length_and_by_stream(
    make_client: Any, database_url: str
) -> None:
    async with make_client(database_url=database_url, max_result_bytes=1000) as client:
        rid = unique_id()
        exact = b'{"a": "' + b"x" * (1000 - 9) + b'"}'
        assert len(exact) == 1000
        assert (await client.put(f"/results/{rid}", content=exact, headers=JSON)).status_code == 201
        over = b'{"a": "' + b"x" * (1001 - 9) + b'"}'
        problem = assert_problem(
            await client.put(f"/results/{rid}", content=over, headers=JSON), 413
        )
        assert problem["limit"] == 1000

        async def chunks() -> Any:
            for _ in range(100):
                yield b" " * 100

        streamed = await client.put(f"/results/{rid}", content=chunks(), headers=JSON)
        assert_problem(streamed, 413)
        assert (await client.get(f"/results/{rid}")).json()["a"] == "x" * 991


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nothing/here"), 404)
    not_allowed = assert_problem(await client.post(f"/results/{unique_id()}", json={}), 405)
    assert not_allowed["type"] == "about:blank"
    response = await client.patch(f"/results/{unique_id()}", json={})
    assert_problem(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {
        "GET",
        "HEAD",
        "PUT",
        "DELETE",
    }
    assert_problem(await client.delete("/results"), 405)


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["checks"]["database"] == "ok"
    assert body["pool"]["checked_out"] == 0


async def test_concurrent_writers_each_get_a_distinct_version(client: httpx.AsyncClient) -> None:
    rid = unique_id()
    responses = await asyncio.gather(
        *(client.put(f"/results/{rid}", json={"writer": n}) for n in range(20))
    )
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert sorted(r.json()["version"] for r in responses) == list(range(1, 21))
    final = await client.get(f"/results/{rid}")
    assert final.headers["etag"] == '"20"'


async def test_start_up_leaves_what_it_made_out_of_full_collections(
    make_client: ClientFactory, sqlite_url: str
) -> None:
    """What start-up builds lives as long as the process: a full collection must not
    walk it on every pass (a pause that stalls every request in flight)."""
    gc.unfreeze()
    async with make_client(database_url=sqlite_url) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert gc.get_freeze_count() > 10_000


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        b'{"a":' + b'{"b":' * 100_000 + b"1" + b"}" * 100_001,
    ],
    ids=["arrays", "objects"],
)
async def test_a_document_nested_deeper_than_the_database_takes_is_422_not_500(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """On PostgreSQL, JSONB's parser runs out of stack (SQLSTATE 54001); on SQLite, orjson
    refuses past its depth limit. Either way the client gets a 4xx, never a 500."""
    response = await client.put(f"/results/{unique_id()}", content=body, headers=JSON)
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
