"""ResultStore: the results table, read and written with SQLAlchemy Core.

PostgreSQL is the source of truth. Every write is one statement on an autocommit
connection: atomic, and with no BEGIN/COMMIT round trips. The version counts up on
every write of an id *including deletes*: a delete leaves a tombstone row (``result``
NULL), so a re-created result continues at the next version and an ETag never comes
back for different content.

Documents go in and come out as JSON text. Bytes from a client are validated and stored
as sent, never re-serialized, so nothing is rounded (orjson would turn an integer past
64 bits into a float); PostgreSQL's JSONB then keeps numbers exactly. A read returns
the stored text (``result::text`` on PostgreSQL) without parsing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from typing import cast as cast_as

import asyncpg
import orjson
from sqlalchemy import (
    BigInteger,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, ColumnElement, Executable

from service.db._engine import await_
from service.db.pool import ConnectionPool, sqlstate
from service.db.schema import results, unsynced_results
from service.errors import (
    InvalidArgument,
    InvalidResult,
    MalformedJSON,
    PreconditionFailed,
    ResultNotFound,
    ResultTooLarge,
)
from service.model import (
    MAX_PAGE_SIZE,
    Absent,
    IfMatch,
    Page,
    ResultMeta,
    StoredResult,
    WriteOutcome,
    encode_document,
    rfc3339,
    validate_analysis_id,
)


class ResultStore:
    """Reads and writes results in the database behind a :class:`ConnectionPool`.

    Raises only this package's errors: :class:`InvalidAnalysisId`,
    :class:`InvalidResult` (and :class:`ResultTooLarge`), :class:`ResultNotFound`,
    :class:`PreconditionFailed`, and the pool's :class:`DatabaseUnavailable` /
    :class:`PoolExhausted`.

    ``max_document_bytes`` bounds a document *as stored*, which is what every later read
    sends and every cache holds: PostgreSQL's JSONB writes numbers in full and adds a
    space after each ``:`` and ``,``, so a document can grow on the way in (``1e-16383``
    becomes 16,392 characters). A write whose stored text would exceed it is refused
    with :class:`ResultTooLarge` and changes nothing. None (the default) sets no bound.
    """

    def __init__(self, pool: ConnectionPool, *, max_document_bytes: int | None = None) -> None:
        if max_document_bytes is not None and max_document_bytes < 2:
            raise InvalidArgument("max_document_bytes must be at least 2 (the size of {})")
        self._pool = pool
        self.max_document_bytes = max_document_bytes
        self._statements = _Statements(pool.dialect)
        self.on_query: Callable[[str, float], None] | None = None
        """Called with each operation's name and seconds (metrics use it)."""

    @property
    def pool(self) -> ConnectionPool:
        """The pool the store reads and writes through."""
        return self._pool

    async def get(self, analysis_id: str) -> StoredResult | None:
        """The live result under ``analysis_id``, or None."""
        found = await self.read(analysis_id)
        return found if isinstance(found, StoredResult) else None

    async def read(self, analysis_id: str) -> StoredResult | Absent:
        """The live result, or :class:`Absent` with the version of its tombstone (one query)."""
        validate_analysis_id(analysis_id)
        row = await self._first("read", self._statements.get, {"id": analysis_id})
        if row is None:
            return Absent(analysis_id, 0)
        body, version, created_at, updated_at = row
        if body is None:
            return Absent(analysis_id, version)
        return StoredResult(_meta(analysis_id, version, created_at, updated_at), body.encode())

    async def put(
        self,
        analysis_id: str,
        document: Mapping[str, Any] | bytes,
        *,
        if_match: IfMatch = None,
        if_none_match: bool = False,
    ) -> WriteOutcome:
        """Store ``document`` as the new version of ``analysis_id``.

        ``if_match`` makes the write conditional on the current version (``"*"``: on any
        live version); ``if_none_match=True`` makes it create-only. A condition that
        does not hold raises :class:`PreconditionFailed` and changes nothing.
        """
        validate_analysis_id(analysis_id)
        text = encode_document(document, parse=not self._statements.database_parses_json)
        limit = self.max_document_bytes
        if limit is not None and len(text.encode()) > limit:
            raise _too_large(len(text.encode()), limit)
        params = {"id": analysis_id, "doc": text, "ts": datetime.now(UTC), "max": limit}
        s = self._statements
        if if_match is not None and if_none_match:
            raise PreconditionFailed("If-Match and If-None-Match: * cannot both hold")
        if if_match == "*":
            row = await self._first("put", s.replace_live, params)
        elif if_match is not None:
            row = await self._first("put", s.replace_version, {**params, "expected": if_match})
        else:
            row = await self._first("put", s.create_only if if_none_match else s.upsert, params)
        if row is None:
            raise PreconditionFailed(_precondition_detail(analysis_id, if_match, if_none_match))
        version, created_at, updated_at, text = row
        meta = _meta(analysis_id, version, created_at, updated_at)
        return WriteOutcome(meta, _utc(created_at) == params["ts"], text.encode())

    async def delete(self, analysis_id: str, *, if_match: IfMatch = None) -> ResultMeta:
        """Delete the live result; return the metadata of the tombstone written.

        Raises :class:`ResultNotFound` when there is no live result, or
        :class:`PreconditionFailed` when ``if_match`` names another version.
        """
        validate_analysis_id(analysis_id)
        params: dict[str, Any] = {"id": analysis_id, "ts": datetime.now(UTC)}
        s = self._statements
        if if_match is None or if_match == "*":
            row = await self._first("delete", s.delete, params)
        else:
            row = await self._first("delete", s.delete_version, {**params, "expected": if_match})
        if row is None:
            if if_match is not None:
                raise PreconditionFailed(_precondition_detail(analysis_id, if_match, False))
            raise ResultNotFound(f"no result with analysis_id {analysis_id!r}")
        return _meta(analysis_id, *row)

    async def list(self, *, limit: int = 100, after: str | None = None) -> Page:
        """Live results ordered by ``analysis_id``, ``limit`` (1-1000) at a time."""
        rows = await self._page_rows(limit, after)
        items = [_meta(*row) for row in rows[:limit]]
        return Page(items, items[-1].analysis_id if len(rows) > limit else None)

    async def list_json(self, *, limit: int = 100, after: str | None = None) -> bytes:
        """The page :meth:`list` returns, as the JSON the API sends (``items``, ``next``):
        the bytes of ``orjson.dumps`` of the page's ``as_dict()`` items.

        The rows go to orjson as they come from the driver, timestamps included (it
        writes them in C); only a timestamp whose microseconds are all zero is
        formatted here, since orjson would leave its fraction out. Letting PostgreSQL
        write the JSON instead cost the database about 0.4 ms of CPU per page of 100,
        twice what it spared this process, and that CPU is shared with everything else.
        """
        rows = await self._page_rows(limit, after)
        items = [
            {
                "analysis_id": analysis_id,
                "version": version,
                "created_at": created if created.microsecond else rfc3339(_utc(created)),
                "updated_at": updated if updated.microsecond else rfc3339(_utc(updated)),
            }
            for analysis_id, version, created, updated in rows[:limit]
        ]
        page = {"items": items, "next": items[-1]["analysis_id"] if len(rows) > limit else None}
        # SQLite hands back naive datetimes, all UTC: NAIVE_UTC writes them as such.
        return orjson.dumps(page, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)

    async def _page_rows(self, limit: int, after: str | None) -> Any:
        """The page's rows, and one more if there is a next page (keyset pagination)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}")
        params: dict[str, Any] = {"limit": limit + 1}
        if after is not None:
            params["after"] = validate_analysis_id(after)
        statement = (
            self._statements.list_after if after is not None else self._statements.list_first
        )
        started = time.perf_counter()
        rows = await self._statements.rows(self._pool, statement, params)
        if self.on_query is not None:
            self.on_query("list", time.perf_counter() - started)
        return rows

    # ``cache`` names the shared cache namespace the notes are about (ResultCache uses its
    # key prefix): deployments that share this database but not a cache keep apart.

    async def note_unsynced(self, cache: str, analysis_id: str, version: int) -> None:
        """Record that the shared cache may hold a version of ``analysis_id`` older than
        ``version`` (a row per id keeps the highest version noted)."""
        params = {"cache": cache, "id": analysis_id, "version": version}
        await self._first("unsynced", self._statements.note_unsynced, params)

    async def unsynced(self, cache: str, limit: int) -> tuple[tuple[str, int], ...]:
        """Up to ``limit`` noted ``(analysis_id, version)`` pairs, oldest first."""
        params = {"cache": cache, "limit": limit}
        rows = await self._statements.rows(self._pool, self._statements.unsynced, params)
        return tuple((analysis_id, version) for analysis_id, version in rows)

    async def forget_unsynced(self, cache: str, analysis_id: str, version: int) -> bool:
        """Drop the note of ``analysis_id`` if it asks for ``version`` or less (the shared
        cache now holds that version or a newer one); True when a note was dropped."""
        params = {"cache": cache, "id": analysis_id, "version": version}
        return await self._first("unsynced", self._statements.forget_unsynced, params) is not None

    async def forget_unsynced_before(self, cache: str, moment: datetime) -> int:
        """Drop every note made before ``moment`` (after the whole shared namespace was
        emptied); return how many. ``moment`` comes from :meth:`database_now`."""
        statement = self._statements.forget_unsynced_before
        params = {"cache": cache, "before": moment}
        return len(await self._statements.rows(self._pool, statement, params))

    async def database_now(self) -> datetime:
        """The database's clock, which times the notes (replicas' clocks may differ)."""
        statement = self._statements.database_now
        moment: datetime = await self._statements.value(self._pool, statement, {})
        return _utc(moment)

    async def _first(self, operation: str, statement: Executable, params: dict[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            row = await self._statements.first(self._pool, statement, params)
            if self.on_query is not None:
                self.on_query(operation, time.perf_counter() - started)
            return row
        except (DBAPIError, asyncpg.PostgresError) as exc:
            state = sqlstate(exc)
            if state == "22P02":  # invalid_text_representation: JSONB's parser said no
                raise MalformedJSON(f"malformed JSON: {_database_detail(exc)}") from None
            if state is not None and state.startswith("22"):  # data exception
                raise InvalidResult(f"the database refused the document ({state})") from None
            if state == "54000" and _database_detail(exc).startswith("stored document would be"):
                # stored_text_within() refused the write (migration 0002).
                size = getattr(getattr(exc, "orig", None) or exc, "detail", None)
                known = int(size) if size and size.isdigit() else None
                raise _too_large(known, params["max"]) from None
            if state is not None and state.startswith("54"):  # program limit exceeded
                # 54001: JSONB's parser ran out of stack on a deeply nested document.
                raise InvalidResult(
                    f"the document exceeds a limit of the database ({state}): nested too deeply?"
                ) from None
            raise


class _Statements:
    """Every statement, built once per dialect, and how each runs.

    On SQLite through SQLAlchemy. On PostgreSQL each statement is compiled once for
    asyncpg and run on the pooled connection's own asyncpg connection (which prepares
    it once and keeps it), through :meth:`ConnectionPool.run_driver`: SQLAlchemy's
    ``Connection``, execution and result layers cost about a third of a cached read's
    CPU, measured, and these statements need none of what they add. The pool, its
    checkout checks and its error translation stay SQLAlchemy's.
    """

    def first(self, pool: ConnectionPool, statement: Executable, params: dict[str, Any]) -> Any:
        """The first row of ``statement`` (or None), run on ``pool`` (awaitable)."""
        driver = self._driver.get(statement)
        if driver is None:
            return pool.run(lambda conn: conn.execute(statement, params).first())
        return pool.run_driver(lambda db: await_(db.fetchrow(driver.sql, *driver.args(params))))

    def rows(self, pool: ConnectionPool, statement: Executable, params: dict[str, Any]) -> Any:
        """Every row of ``statement``, run on ``pool`` (awaitable)."""
        driver = self._driver.get(statement)
        if driver is None:
            return pool.run(lambda conn: conn.execute(statement, params).all())
        return pool.run_driver(lambda db: await_(db.fetch(driver.sql, *driver.args(params))))

    def value(self, pool: ConnectionPool, statement: Executable, params: dict[str, Any]) -> Any:
        """The one value of ``statement``'s one row, run on ``pool`` (awaitable)."""
        driver = self._driver.get(statement)
        if driver is None:
            return pool.run(lambda conn: conn.execute(statement, params).scalar_one())
        return pool.run_driver(lambda db: await_(db.fetchval(driver.sql, *driver.args(params))))

    def __init__(self, dialect: str) -> None:
        t = results
        doc: ColumnElement[Any] = bindparam("doc", type_=Text)
        insert: postgresql.Insert | sqlite.Insert
        if dialect == "postgresql":
            doc = cast(doc, postgresql.JSONB)
            insert = postgresql.insert(t)
        else:
            insert = sqlite.insert(t)
        key = t.c.analysis_id == bindparam("id")
        live = t.c.result.is_not(None)
        written = (t.c.version, t.c.created_at, t.c.updated_at)
        ts = bindparam("ts", type_=t.c.updated_at.type)

        # Tombstones too: their version orders a cached "absent" against older reads.
        self.get = select(cast(t.c.result, Text), *written).where(key)

        new = insert.values(
            analysis_id=bindparam("id"), result=doc, version=1, created_at=ts, updated_at=ts
        )
        revive_or_replace = {
            "result": new.excluded.result,
            "version": t.c.version + 1,
            # A write over a tombstone is a creation: it starts a new created_at.
            "created_at": case(
                (t.c.result.is_(None), new.excluded.created_at), else_=t.c.created_at
            ),
            "updated_at": new.excluded.updated_at,
        }
        # A write returns the text as the database will hand it back (JSONB normalizes
        # it), so a cache filled from the write holds the same bytes as one filled by a read.
        # On PostgreSQL that text is checked against the size bound in the same statement
        # (an error there aborts the write); on SQLite the text is stored as sent.
        stored_text: ColumnElement[Any] = cast(t.c.result, Text)
        if dialect == "postgresql":
            stored_text = func.stored_text_within(
                stored_text, bindparam("max", type_=BigInteger), type_=Text
            )
        stored = (*written, stored_text)
        self.upsert = new.on_conflict_do_update(
            index_elements=[t.c.analysis_id], set_=revive_or_replace
        ).returning(*stored)
        self.create_only = new.on_conflict_do_update(
            index_elements=[t.c.analysis_id], set_=revive_or_replace, where=t.c.result.is_(None)
        ).returning(*stored)

        replace = update(t).values(result=doc, version=t.c.version + 1, updated_at=ts)
        self.replace_live = replace.where(key, live).returning(*stored)
        self.replace_version = replace.where(
            key, live, t.c.version == bindparam("expected")
        ).returning(*stored)

        tombstone = update(t).values(result=null(), version=t.c.version + 1, updated_at=ts)
        self.delete = tombstone.where(key, live).returning(*written)
        self.delete_version = tombstone.where(
            key, live, t.c.version == bindparam("expected")
        ).returning(*written)

        listing = select(t.c.analysis_id, *written).where(live).order_by(t.c.analysis_id)
        self.list_first = listing.limit(bindparam("limit"))
        self.list_after = listing.where(t.c.analysis_id > bindparam("after")).limit(
            bindparam("limit")
        )
        u = unsynced_results
        in_cache = u.c.cache == bindparam("cache")
        note = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(u).values(
            cache=bindparam("cache"),
            analysis_id=bindparam("id"),
            version=bindparam("version"),
            noted_at=func.now(),
        )
        self.note_unsynced = note.on_conflict_do_update(
            index_elements=[u.c.cache, u.c.analysis_id],
            set_={
                "version": case(
                    (u.c.version > note.excluded.version, u.c.version),
                    else_=note.excluded.version,
                ),
                "noted_at": func.now(),
            },
        ).returning(u.c.version)
        self.unsynced = (
            select(u.c.analysis_id, u.c.version)
            .where(in_cache)
            .order_by(u.c.noted_at, u.c.analysis_id)
            .limit(bindparam("limit"))
        )
        self.forget_unsynced = (
            delete(u)
            .where(
                in_cache, u.c.analysis_id == bindparam("id"), u.c.version <= bindparam("version")
            )
            .returning(u.c.analysis_id)
        )
        self.forget_unsynced_before = (
            delete(u).where(in_cache, u.c.noted_at < bindparam("before")).returning(u.c.analysis_id)
        )
        self.database_now = select(func.now())
        self._driver: dict[Executable, _DriverStatement] = {}
        self.database_parses_json = dialect == "postgresql"
        """Whether the database parses a document's JSON as it stores it (JSONB does)."""
        if dialect == "postgresql":
            compiler = asyncpg_dialect()  # type: ignore[no-untyped-call]
            for statement in vars(self).values():
                if isinstance(statement, Executable):
                    self._driver[statement] = _DriverStatement(statement, compiler)


class _DriverStatement:
    """A statement as asyncpg runs it: its SQL with ``$n`` placeholders, and the order
    (and fixed values) of its parameters."""

    __slots__ = ("defaults", "names", "sql")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        # No type of ours converts values on the way in (no bind processors), so the
        # values go to asyncpg as they are; the store's tests cover every statement.
        clause = cast_as(ClauseElement, statement)
        compiled = cast_as(SQLCompiler, clause.compile(dialect=dialect))
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        self.defaults = dict(compiled.params)

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] if name in params else self.defaults[name] for name in self.names]


def _meta(analysis_id: str, version: int, created_at: datetime, updated_at: datetime) -> ResultMeta:
    return ResultMeta(analysis_id, version, _utc(created_at), _utc(updated_at))


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _database_detail(exc: BaseException) -> str:
    """PostgreSQL's own words on a refused document (its message and detail, which
    quote a token of the client's own body), short; never the statement."""
    inner = getattr(exc, "orig", None) or exc
    message = getattr(inner, "message", None) or str(inner).splitlines()[0]
    detail = getattr(inner, "detail", None)
    return (f"{message}: {detail}" if detail else message)[:200]


def _too_large(size: int | None, limit: int) -> ResultTooLarge:
    stored = f"{size} bytes" if size is not None else "more"
    return ResultTooLarge(
        f"as stored, the document would be {stored}, over the limit of {limit} bytes"
        " (MAX_RESULT_BYTES); PostgreSQL writes every number in full (1e-300 takes 302"
        " characters): send very large or very small numbers as strings",
        size=size,
        limit=limit,
    )


def _precondition_detail(analysis_id: str, if_match: IfMatch, if_none_match: bool) -> str:
    if if_none_match:
        return f"a result with analysis_id {analysis_id!r} already exists"
    if if_match == "*":
        return f"no result with analysis_id {analysis_id!r} exists to replace"
    return f"result {analysis_id!r} is not at version {if_match}"
