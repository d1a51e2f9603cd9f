"""A document is bounded as stored, not only as sent: no small request becomes a big GET.

PostgreSQL's JSONB keeps numbers as ``numeric`` and prints them in full, so ``1e-16383``
(9 bytes) is served as 16,392 characters and ``1e131071`` as 131,072; it also adds a
space after every ``:`` and ``,``. The store refuses, in the writing statement itself,
a document whose stored text exceeds its bound, and changes nothing.
"""

from __future__ import annotations

import pytest

from service.db.migrations import upgrade
from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.errors import InvalidResult, ResultTooLarge
from service.model import Absent
from tests.helpers import ClientFactory, unique_id

LIMIT = 64 * 1024

# The widest numbers JSON allows that PostgreSQL's numeric still accepts, and the
# densest structure (two bytes per element that JSONB writes as three).
WORST = {
    "tiny": b'{"x": 1e-16383}',
    "huge": b'{"x": 1e131071}',
    "many tiny": b'{"x": [' + b",".join([b"1e-16383"] * 10) + b"]}",
    "negative": b'{"x": -9.9e-16383}',
    "dense": b'{"x": [' + b",".join([b"0"] * 30_000) + b"]}",
}


@pytest.mark.parametrize("name", list(WORST))
async def test_the_worst_numbers_json_allows_are_refused_when_stored_too_large(
    database_url: str, name: str
) -> None:
    body = WORST[name]
    assert len(body) <= LIMIT
    async with ConnectionPool(database_url) as pool:
        await upgrade(pool)
        store = ResultStore(pool, max_document_bytes=LIMIT)
        rid = unique_id("worst")
        refused: InvalidResult | None = None
        try:
            outcome = await store.put(rid, body)
        except InvalidResult as exc:  # ResultTooLarge, or beyond what numeric holds
            refused = exc
        if refused is not None:
            if isinstance(refused, ResultTooLarge):
                assert refused.limit == LIMIT
                assert refused.size is None or refused.size > LIMIT
            assert isinstance(await store.read(rid), Absent), "a refused write changed nothing"
        else:
            # Stored (SQLite keeps the text as sent): then it is within the bound.
            assert len(outcome.body) <= LIMIT
            found = await store.get(rid)
            assert found is not None
            assert len(found.body) <= LIMIT


async def test_postgresql_refuses_what_would_grow_past_the_bound(pg_url: str) -> None:
    async with ConnectionPool(pg_url) as pool:
        store = ResultStore(pool, max_document_bytes=LIMIT)
        for name in ("huge", "many tiny", "dense"):
            with pytest.raises(ResultTooLarge) as raised:
                await store.put(unique_id("grow"), WORST[name])
            assert raised.value.size is not None, name
            assert raised.value.size > LIMIT, name
        # A document that grows but stays within the bound is stored as JSONB writes it.
        outcome = await store.put(unique_id("fits"), WORST["tiny"])
        assert len(outcome.body) == len('{"x": 0.}') + 16383


async def test_a_mapping_or_body_over_the_bound_is_refused_before_the_database(
    database_url: str,
) -> None:
    async with ConnectionPool(database_url) as pool:
        await upgrade(pool)
        store = ResultStore(pool, max_document_bytes=100)
        with pytest.raises(ResultTooLarge):
            await store.put(unique_id("big"), {"x": "y" * 200})
        with pytest.raises(ResultTooLarge):
            await store.put(unique_id("big"), b'{"x": "' + b"y" * 200 + b'"}')
        assert (await store.put(unique_id("small"), {"x": 1})).meta.version == 1


async def test_without_a_bound_nothing_is_refused_for_its_size(pg_url: str) -> None:
    async with ConnectionPool(pg_url) as pool:
        outcome = await ResultStore(pool).put(unique_id("free"), WORST["tiny"])
        assert len(outcome.body) > 16_000


async def test_http_put_that_would_grow_past_max_result_bytes_is_413_and_stores_nothing(
    make_client: ClientFactory, pg_url: str
) -> None:
    rid = unique_id("amplify")
    # 9.5 KB that PostgreSQL would store as about 9.8 MB.
    body = b'{"x": [' + b",".join([b"1e-16383"] * 1000) + b"]}"
    async with make_client(database_url=pg_url, max_result_bytes=LIMIT) as client:
        response = await client.put(
            f"/results/{rid}", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == "/problems/result-too-large"
        assert problem["limit"] == LIMIT
        assert "as strings" in problem["detail"]
        assert (await client.get(f"/results/{rid}")).status_code == 404
        # What fits is stored and served within the bound.
        fits = await client.put(f"/results/{rid}", json={"x": [1.5e-300] * 3})
        assert fits.status_code == 201, fits.text
        served = await client.get(f"/results/{rid}", headers={"accept-encoding": "identity"})
        assert served.status_code == 200
        assert len(served.content) <= LIMIT
