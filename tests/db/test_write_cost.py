"""The write-cost model of the index advisor, and the reading of an UPDATE's SET list
it rests on: pure functions, no server."""

from __future__ import annotations

import pytest

from service.db.assignments import updated_columns
from service.db.write_cost import STATEMENT_PARTS, TableWrites, Write, added_cost


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


S = STATEMENT_PARTS


def update(rows: int, ms: float, *sets: str, calls: int = 1) -> Write:
    return Write(rows, ms, calls, update=True, sets=frozenset(sets))


def test_an_index_takes_a_part_of_each_row_written() -> None:
    """One statement of 100 rows, a table with one index: the statement's own work,
    then the heap and the index take a part of each row. One more index adds a part
    to each row; a partial one holding a tenth of the rows, to a tenth of them."""
    writes = TableWrites([Write(100, 90.0, calls=1)])
    part = 90.0 / (S + 100 * 2)
    assert added_cost(writes, frozenset({"a"}), 1.0, parts=2, indexed={"id"}).ms == (
        pytest.approx(100 * part)
    )
    assert added_cost(writes, frozenset({"a"}), 0.1, parts=2, indexed={"id"}).ms == (
        pytest.approx(10 * part)
    )


def test_a_statement_that_writes_one_row_is_mostly_its_own_work() -> None:
    """1,000 single-row inserts into a table with one index: each call is its own work
    and two parts, so one more index adds one part in S + 2, not a half."""
    writes = TableWrites([Write(1_000, 70.0, calls=1_000)])
    cost = added_cost(writes, frozenset({"a"}), 1.0, parts=2, indexed={"id"})
    assert cost.ms == pytest.approx(70.0 / (S + 2))
    assert cost.ms < 70.0 / 4


def test_updates_that_were_never_heap_only_weigh_as_inserts() -> None:
    writes = TableWrites([update(100, 40.0, "v")], updated=100, hot=0)
    cost = added_cost(writes, frozenset({"v"}), 1.0, parts=2, indexed={"id"})
    assert cost.ms == pytest.approx(40.0 * 100 / (S + 200))
    assert cost.hot_lost == 0


def test_heap_only_updates_cost_an_index_on_other_columns_nothing() -> None:
    writes = TableWrites([update(100, 40.0, "v")], updated=100, hot=100)
    cost = added_cost(writes, frozenset({"c"}), 1.0, parts=2, indexed={"id"})
    assert (cost.ms, cost.hot_lost) == (0.0, 0)


def test_an_index_on_an_updated_column_ends_heap_only_updates() -> None:
    """100 single-row HOT updates: each its own work and the heap's part. With the
    index each writes the heap, the primary key and the new index: two parts more."""
    writes = TableWrites([update(100, 60.0, "v", calls=100)], updated=100, hot=100)
    cost = added_cost(writes, frozenset({"v"}), 1.0, parts=2, indexed={"id"})
    assert cost.ms == pytest.approx(60.0 * 2 / (S + 1))
    assert cost.hot_lost == 100


def test_a_share_of_heap_only_rows() -> None:
    """Half of 100 rows HOT: the statement's time is S + 50 * 1 + 50 * 2 parts. The
    new index adds a part to each of the 50 others, and if it reads the updated column,
    two parts to each of the 50 HOT ones."""
    writes = TableWrites([update(100, 60.0, "v")], updated=100, hot=50)
    part = 60.0 / (S + 150)
    elsewhere = added_cost(writes, frozenset({"c"}), 1.0, parts=2, indexed={"id"})
    assert elsewhere.ms == pytest.approx(50 * part)
    assert elsewhere.hot_lost == 0
    on_it = added_cost(writes, frozenset({"v"}), 1.0, parts=2, indexed={"id"})
    assert on_it.ms == pytest.approx(150 * part)
    assert on_it.hot_lost == 50


def test_the_hot_share_counts_only_updates_no_index_blocks() -> None:
    """Two statements of 100 rows, one setting an indexed column (never HOT): the
    table's 100 HOT rows are all the other's, so an index elsewhere costs that one
    nothing, and the blocked one a part per row, as an insert."""
    writes = TableWrites([update(100, 40.0, "v"), update(100, 60.0, "k")], updated=200, hot=100)
    cost = added_cost(writes, frozenset({"c"}), 1.0, parts=3, indexed={"id", "k"})
    assert cost.ms == pytest.approx(60.0 * 100 / (S + 300))
    assert cost.hot_lost == 0


def test_an_update_whose_text_cannot_be_read_weighs_as_an_insert() -> None:
    writes = TableWrites([Write(100, 40.0, update=True, sets=None)], updated=100, hot=100)
    cost = added_cost(writes, frozenset({"v"}), 1.0, parts=2, indexed={"id"})
    assert cost.ms == pytest.approx(40.0 * 100 / (S + 200))
    assert cost.hot_lost == 0


def test_an_index_chosen_before_blocks_as_an_existing_one() -> None:
    """Once an index on ``v`` is suggested, the updates of ``v`` are not HOT any more:
    the next index on another column takes a part of each."""
    writes = TableWrites([update(100, 40.0, "v")], updated=100, hot=100)
    cost = added_cost(writes, frozenset({"c"}), 1.0, parts=3, indexed={"id"}, chosen={"v"})
    assert cost.ms == pytest.approx(40.0 * 100 / (S + 300))
    assert cost.hot_lost == 0
