"""The write-cost model of the index advisor, and the reading of an UPDATE's SET list
it rests on: pure functions, no server."""

from __future__ import annotations

import pytest

from service.db.assignments import updated_columns
from service.db.write_cost import (
    HEAP_PART,
    ORDERED_PART,
    STATEMENT_PARTS,
    Shape,
    TableWrites,
    Write,
    added_cost,
)


@pytest.mark.parametrize(
    ("query", "columns"),
    [
        ("UPDATE w SET v = v + $1 WHERE id = $2", {"v"}),
        ("update ONLY public.t AS x set a = $1, b = $2 from y where y.id = x.id", {"a", "b"}),
        ('UPDATE t SET "Mixed" = $1, Lower = $2', {"Mixed", "lower"}),
        ("UPDATE t SET Café = $1, ÉTÉ = $2", {"café", "ÉtÉ"}),
        ('UPDATE t SET (a, "B") = ($1, $2) WHERE id = $3', {"a", "B"}),
        ("UPDATE t SET (a, b) = (SELECT x, y FROM s WHERE s.id = t.id)", {"a", "b"}),
        ("UPDATE t SET tags[1] = $1, point.x = $2", {"tags", "point"}),
        ("UPDATE t SET a = (SELECT max(z) FROM q WHERE q.k = t.k), c = $1", {"a", "c"}),
        ("UPDATE t SET a = b IS DISTINCT FROM c, d = $1 WHERE e", {"a", "d"}),
        (
            "UPDATE t SET a = 'where, b = 1' || $1, -- c = 2\n e = $$ from $$ WHERE id = 1",
            {"a", "e"},
        ),
        ("UPDATE t /* SET x = 1 */ SET y = $1 RETURNING x", {"y"}),
    ],
)
def test_the_columns_an_update_sets(query: str, columns: set[str]) -> None:
    assert updated_columns(query) == frozenset(columns)


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO t (a) VALUES ($1)",
        "WITH x AS (SELECT 1) UPDATE t SET a = $1",
        "UPDATE t SET",
        "UPDATE t SET = $1",
        "UPDATE t SET (a, $1) = ($2, $3)",
        "",
    ],
)
def test_text_that_is_not_plainly_a_set_list_reads_as_unknown(query: str) -> None:
    assert updated_columns(query) is None


S, HEAP, ORDERED = STATEMENT_PARTS, HEAP_PART, ORDERED_PART
KEY = Shape(frozenset({"id"}), ordered=True)
"""A primary key on ids taken from a sequence."""


def index(*columns: str, ordered: bool = False, share: float = 1.0) -> Shape:
    return Shape(frozenset(columns), ordered, share)


def update(rows: int, ms: float, *sets: str, calls: int = 1) -> Write:
    return Write(rows, ms, calls, update=True, sets=frozenset(sets))


def test_an_insert_writes_each_index_an_entry() -> None:
    """One statement of 100 rows into a table with a primary key: its own work, then
    each row the heap's part and the key's. A new index on a column whose values come
    in any order adds a whole part to each row; one whose keys arrive in order, less;
    a partial one holding a tenth of the rows, a tenth."""
    writes = TableWrites([Write(100, 90.0, calls=1)])
    part = 90.0 / (S + 100 * (HEAP + ORDERED))
    assert added_cost(writes, index("a"), [KEY]).ms == pytest.approx(100 * part)
    ordered = added_cost(writes, index("a", ordered=True), [KEY]).ms
    assert ordered == pytest.approx(100 * ORDERED * part)
    partial = added_cost(writes, index("a", share=0.1), [KEY]).ms
    assert partial == pytest.approx(10 * part)


def test_a_statement_that_writes_one_row_is_mostly_its_own_work() -> None:
    """1,000 single-row inserts: each call its own work and the row's parts, so a new
    index adds far less than it does where one statement writes the 1,000 rows."""
    single = TableWrites([Write(1_000, 70.0, calls=1_000)])
    bulk = TableWrites([Write(1_000, 70.0, calls=1)])
    one = added_cost(single, index("a"), [KEY]).ms
    assert one == pytest.approx(70.0 / (S + HEAP + ORDERED))
    many = added_cost(bulk, index("a"), [KEY]).ms
    assert many == pytest.approx(70.0 * 1_000 / (S + 1_000 * (HEAP + ORDERED)))
    assert many > 5 * one


def test_updates_that_were_never_heap_only_write_every_index() -> None:
    """An update that is not HOT writes each index a whole part, in order or not:
    the row's key goes where it sorts."""
    writes = TableWrites([update(100, 40.0, "v")], updated=100, hot=0)
    cost = added_cost(writes, index("v", ordered=True), [KEY])
    assert cost.ms == pytest.approx(40.0 * 100 / (S + 100 * (HEAP + 1)))
    assert cost.hot_lost == 0


def test_heap_only_updates_cost_an_index_on_other_columns_nothing() -> None:
    writes = TableWrites([update(100, 40.0, "v")], updated=100, hot=100)
    cost = added_cost(writes, index("c"), [KEY])
    assert (cost.ms, cost.hot_lost) == (0.0, 0)


def test_an_index_on_an_updated_column_ends_heap_only_updates() -> None:
    """100 single-row HOT updates: each its own work and the heap's part. With the
    index each also writes the primary key and the new index a part."""
    writes = TableWrites([update(100, 60.0, "v", calls=100)], updated=100, hot=100)
    cost = added_cost(writes, index("v"), [KEY])
    assert cost.ms == pytest.approx(60.0 * 2 / (S + HEAP))
    assert cost.hot_lost == 100


def test_a_share_of_heap_only_rows() -> None:
    """Half of 100 rows HOT: the statement's time is its own work, 50 HOT rows of the
    heap's part and 50 others of the heap's and the key's. The new index adds a part to
    each of the 50 others, and if it reads the updated column, two to each HOT one."""
    writes = TableWrites([update(100, 60.0, "v")], updated=100, hot=50)
    part = 60.0 / (S + 50 * HEAP + 50 * (HEAP + 1))
    elsewhere = added_cost(writes, index("c"), [KEY])
    assert elsewhere.ms == pytest.approx(50 * part)
    assert elsewhere.hot_lost == 0
    on_it = added_cost(writes, index("v"), [KEY])
    assert on_it.ms == pytest.approx((50 + 50 * 2) * part)
    assert on_it.hot_lost == 50


def test_the_hot_share_counts_only_updates_no_index_blocks() -> None:
    """Two statements of 100 rows, one setting an indexed column (never HOT): the
    table's 100 HOT rows are all the other's, so an index elsewhere costs that one
    nothing, and the blocked one a part per row."""
    writes = TableWrites([update(100, 40.0, "v"), update(100, 60.0, "k")], updated=200, hot=100)
    cost = added_cost(writes, index("c"), [KEY, index("k")])
    assert cost.ms == pytest.approx(60.0 * 100 / (S + 100 * (HEAP + 2)))
    assert cost.hot_lost == 0


def test_an_update_whose_text_cannot_be_read_is_taken_as_never_heap_only() -> None:
    writes = TableWrites([Write(100, 40.0, update=True, sets=None)], updated=100, hot=100)
    cost = added_cost(writes, index("v"), [KEY])
    assert cost.ms == pytest.approx(40.0 * 100 / (S + 100 * (HEAP + 1)))
    assert cost.hot_lost == 0


def test_an_index_chosen_before_blocks_as_an_existing_one() -> None:
    """Once an index on ``v`` is suggested, the updates of ``v`` are not HOT any more:
    the next index on another column takes a part of each."""
    writes = TableWrites([update(100, 40.0, "v")], updated=100, hot=100)
    cost = added_cost(writes, index("c"), [KEY], [index("v")])
    assert cost.ms == pytest.approx(40.0 * 100 / (S + 100 * (HEAP + 2)))
    assert cost.hot_lost == 0
