"""ResultStore used from Python (the SDK), on PostgreSQL and on SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import orjson
import pytest

from service.db.pool import ConnectionPool
from service.db.result_store import ResultStore
from service.db.schema import results
from service.errors import (
    DatabaseUnavailable,
    InvalidAnalysisId,
    InvalidResult,
    MalformedJSON,
    PreconditionFailed,
    ResultNotFound,
)
from service.model import encode_document
from tests.helpers import side_dsn, unique_id


async def test_put_get_delete_round_trip(store: ResultStore) -> None:
    rid = unique_id()
    written = await store.put(
        rid, {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "id": uuid.UUID(int=7), "n": 1}
    )
    assert written.created
    assert written.meta.version == 1
    assert written.meta.etag == '"1"'
    stored = await store.get(rid)
    assert stored is not None
    assert stored.document() == {
        "when": "2026-01-02T03:04:05+00:00",
        "id": "00000000-0000-0000-0000-000000000007",
        "n": 1,
    }
    assert stored.meta == written.meta
    tombstone = await store.delete(rid)
    assert tombstone.version == 2
    assert await store.get(rid) is None
    with pytest.raises(ResultNotFound):
        await store.delete(rid)


async def test_created_flag_and_timestamps(store: ResultStore) -> None:
    rid = unique_id()
    first = await store.put(rid, {"v": 1})
    second = await store.put(rid, {"v": 2})
    assert first.created
    assert not second.created
    assert second.meta.created_at == first.meta.created_at
    assert second.meta.updated_at > first.meta.updated_at
    await store.delete(rid)
    revived = await store.put(rid, {"v": 3})
    assert revived.created
    assert revived.meta.created_at > first.meta.created_at


async def test_conditional_writes(store: ResultStore) -> None:
    rid = unique_id()
    with pytest.raises(PreconditionFailed):
        await store.put(rid, {"v": 1}, if_match="*")
    await store.put(rid, {"v": 1}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.put(rid, {"v": 2}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.put(rid, {"v": 2}, if_match=2)
    assert (await store.put(rid, {"v": 2}, if_match=1)).meta.version == 2
    with pytest.raises(PreconditionFailed):
        await store.delete(rid, if_match=1)
    with pytest.raises(PreconditionFailed):
        await store.put(rid, {"v": 2}, if_match=2, if_none_match=True)
    stored = await store.get(rid)
    assert stored is not None
    assert stored.document() == {"v": 2}


async def test_racing_conditional_writers_exactly_one_wins(store: ResultStore) -> None:
    rid = unique_id()
    await store.put(rid, {"v": 0})
    outcomes = await asyncio.gather(
        *(store.put(rid, {"v": n}, if_match=1) for n in range(10)), return_exceptions=True
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, PreconditionFailed) for o in outcomes if o not in winners)


@pytest.mark.parametrize("bad", ["", "x" * 129, "a/b", "..", ".", "é", "a b", "a\x00b"])
async def test_bad_ids_raise_invalid_analysis_id(store: ResultStore, bad: str) -> None:
    with pytest.raises(InvalidAnalysisId):
        await store.get(bad)
    with pytest.raises(InvalidAnalysisId):
        await store.put(bad, {"a": 1})


async def test_unserializable_and_non_object_documents(store: ResultStore) -> None:
    with pytest.raises(InvalidResult, match="serialized"):
        await store.put(unique_id(), {"a": Decimal("1.5")})
    with pytest.raises(InvalidResult, match="serialized"):
        await store.put(unique_id(), {"a": object()})
    with pytest.raises(InvalidResult, match="mapping"):
        await store.put(unique_id(), [1, 2])  # type: ignore[arg-type]
    with pytest.raises(MalformedJSON):
        await store.put(unique_id(), b"{not json")
    with pytest.raises(InvalidResult, match="object"):
        await store.put(unique_id(), b"[]")


def test_bytes_are_stored_as_sent_not_rounded() -> None:
    raw = b'{"n": 18446744073709551616123}'
    assert encode_document(raw) == raw.decode()


async def test_nul_characters_are_refused_cleanly_on_postgresql(store: ResultStore) -> None:
    # JSONB cannot hold U+0000; PostgreSQL refuses it and the store says so precisely.
    rid = unique_id()
    document = b'{"s": "a\\u0000b"}'
    if store.pool.dialect == "postgresql":
        with pytest.raises(InvalidResult, match="22P05"):
            await store.put(rid, document)
        assert await store.get(rid) is None
    else:
        await store.put(rid, document)
        stored = await store.get(rid)  # SQLite keeps it
        assert stored is not None
        assert stored.document() == {"s": "a\x00b"}


async def test_list_limits(store: ResultStore) -> None:
    for limit in (0, 1001, -5):
        with pytest.raises(ValueError, match="limit"):
            await store.list(limit=limit)
    with pytest.raises(InvalidAnalysisId):
        await store.list(after="../x")
    prefix = unique_id("page")
    for n in range(3):
        await store.put(f"{prefix}-{n}", {"n": n})
    page = await store.list(limit=2, after=f"{prefix}-")
    assert [m.analysis_id for m in page.items] == [f"{prefix}-0", f"{prefix}-1"]
    assert page.next == f"{prefix}-1"


async def test_list_json_is_the_page_as_orjson_writes_it(store: ResultStore) -> None:
    """PostgreSQL writes the page's JSON itself: it must be the very bytes the Python
    path makes, on full pages, the last page, an empty page, and with deletes between."""
    prefix = unique_id("json")
    for n in range(7):
        await store.put(f"{prefix}-{n}", {"n": n})
    await store.delete(f"{prefix}-3")
    for limit, after in [
        (2, f"{prefix}-"),
        (3, f"{prefix}-1"),
        (10, f"{prefix}-4"),
        (1, f"{prefix}-6"),
    ]:
        page = await store.list(limit=limit, after=after)
        expected = orjson.dumps(
            {"items": [meta.as_dict() for meta in page.items], "next": page.next}
        )
        assert await store.list_json(limit=limit, after=after) == expected
    first = await store.list(limit=1000)
    assert await store.list_json(limit=1000) == orjson.dumps(
        {"items": [meta.as_dict() for meta in first.items], "next": first.next}
    )
    for limit in (0, 1001, True):
        with pytest.raises(ValueError, match="limit"):
            await store.list_json(limit=limit)
    with pytest.raises(InvalidAnalysisId):
        await store.list_json(after="a b")


async def test_list_json_writes_whole_seconds_with_their_microseconds(
    store: ResultStore,
) -> None:
    """orjson leaves the fraction out of a timestamp whose microseconds are all zero;
    the page must still say ``.000000Z``, as ``as_dict()`` (and a PUT's answer) does."""
    prefix = unique_id("whole")
    for n in range(3):
        await store.put(f"{prefix}-{n}", {"n": n})
    whole = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with store.pool.connection() as conn:
        await conn.execute(
            results.update()
            .where(results.c.analysis_id == f"{prefix}-1")
            .values(created_at=whole, updated_at=whole)
        )
    page = await store.list(limit=3, after=f"{prefix}-")
    body = await store.list_json(limit=3, after=f"{prefix}-")
    assert body == orjson.dumps(
        {"items": [meta.as_dict() for meta in page.items], "next": page.next}
    )
    assert b'"updated_at":"2026-01-02T03:04:05.000000Z"' in body


async def _blocked_writer(pg_url: str, analysis_id: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection holding the row lock of ``analysis_id`` in an open transaction."""
    holder = await asyncpg.connect(side_dsn(pg_url))
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM results WHERE analysis_id = $1 FOR UPDATE", analysis_id)
        yield holder
        await transaction.rollback()
    finally:
        await holder.close()


async def test_a_statement_timeout_on_the_driver_path_is_unavailable_and_recoverable(
    pg_url: str,
) -> None:
    """The store runs its statements on asyncpg directly: asyncpg's own errors must still
    become the package's, and the pool must stay usable."""
    rid = unique_id("timeout")
    async with ConnectionPool(pg_url, statement_timeout=0.3) as pool:
        store = ResultStore(pool)
        await store.put(rid, {"v": 1})
        async for _ in _blocked_writer(pg_url, rid):
            with pytest.raises(DatabaseUnavailable):
                await store.put(rid, {"v": 2})
        assert (await store.put(rid, {"v": 3})).meta.version == 2
        assert pool.stats().checked_out == 0


async def _waiting_on_the_lock(holder: asyncpg.Connection) -> int:
    """The backend pid of the statement waiting on the lock ``holder`` keeps."""
    async with asyncio.timeout(5):
        while True:
            await asyncio.sleep(0.05)
            victim: int | None = await holder.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            if victim is not None:
                return victim


async def test_a_backend_killed_mid_statement_is_unavailable_and_replaced(pg_url: str) -> None:
    rid = unique_id("killed")
    async with ConnectionPool(pg_url, pool_size=2, ping_idle_after=60) as pool:
        store = ResultStore(pool)
        await store.put(rid, {"v": 1})
        async for holder in _blocked_writer(pg_url, rid):
            write = asyncio.create_task(store.put(rid, {"v": 2}))
            victim = await _waiting_on_the_lock(holder)
            assert await holder.fetchval("SELECT pg_terminate_backend($1)", victim)
            with pytest.raises(DatabaseUnavailable):
                await write
        stored = await store.get(rid)  # a fresh connection replaces the dead one
        assert stored is not None
        assert stored.document() == {"v": 1}
        assert pool.stats().checked_out == 0


@pytest.mark.parametrize("interruption", ["cancelled", "server gone"])
async def test_a_connection_interrupted_mid_statement_is_not_handed_out_again(
    pg_url: str, interruption: str
) -> None:
    """The store's statements bypass SQLAlchemy's execution, so its disconnect check
    never sees their errors: the pool itself must drop such a connection, or the next
    caller gets it mid-operation ("another operation is in progress") or dead."""
    rid = unique_id("interrupted")
    async with ConnectionPool(pg_url, pool_size=1, max_overflow=0, ping_idle_after=60) as pool:
        store = ResultStore(pool)
        await store.put(rid, {"v": 1})
        async for holder in _blocked_writer(pg_url, rid):
            write = asyncio.create_task(store.put(rid, {"v": 2}))
            victim = await _waiting_on_the_lock(holder)
            if interruption == "cancelled":
                write.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await write
            else:
                assert await holder.fetchval("SELECT pg_terminate_backend($1)", victim)
                with pytest.raises(DatabaseUnavailable):
                    await write
        for _ in range(3):  # the one pooled connection, every time
            stored = await store.get(rid)
            assert stored is not None
        assert (await store.put(rid, {"v": 3})).meta.version >= 2
        assert pool.stats().checked_out == 0
