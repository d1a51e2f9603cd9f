"""The advisor's rules that need no server: which existing index makes a candidate a
duplicate, and which partial-index predicates it reads from a plan's filters (the
advice itself is tested against real PostgreSQL in test_optimizer_report.py)."""

from __future__ import annotations

from service.db.advisor import Candidate, _covers, _folded, _Index, _null_tests

TABLE = ("public", "t")


def candidate(*columns: str, predicate: str | None = None) -> Candidate:
    return Candidate(TABLE, "public.t", columns, predicate)


def test_an_index_that_starts_with_the_candidate_s_columns_makes_it_a_duplicate() -> None:
    existing = _Index(("b", "a"), None)
    assert _covers(existing, candidate("b"))
    assert _covers(existing, candidate("b", "a"))
    assert _covers(existing, candidate("b", predicate="a IS NULL"))  # it holds every row
    assert not _covers(existing, candidate("a"))
    assert not _covers(existing, candidate("a", "b"))
    assert not _covers(_Index(("lower(b)", "b"), None), candidate("b"))  # an expression first
    assert _covers(_Index(("lower(b)",), None), candidate("(lower(b))"))
    assert not _covers(_Index(("b",), None), candidate("(lower(b))"))


def test_a_partial_index_covers_only_a_candidate_with_its_predicate() -> None:
    partial = _Index(("b",), "(deleted_at IS NULL)")
    assert _covers(partial, candidate("b", predicate="deleted_at IS NULL"))
    assert not _covers(partial, candidate("b"))
    assert not _covers(partial, candidate("b", predicate="deleted_at IS NOT NULL"))


def test_null_tests_are_read_from_filters_and_rebuilt_from_quoted_names() -> None:
    columns = ["owner", "deleted_at", '"Archived"']
    filters = ["((p.owner = $1) AND (p.deleted_at IS NULL))", '(p."Archived" IS NOT NULL)']
    assert _null_tests(columns, filters) == [
        ("deleted_at IS NULL", "deleted_at"),
        ('"Archived" IS NOT NULL', '"Archived"'),
    ]
    # A longer name that ends with a column's name is not that column.
    assert _null_tests(["at"], ["(p.deleted_at IS NULL)"]) == []


def test_case_folded_comparisons_become_expression_elements() -> None:
    columns = ["email", '"Name"', "mail"]
    filters = ['((lower(c.email) = $1) AND (upper(c."Name") = $2))', "(c.mail = $3)"]
    assert _folded(columns, filters) == ["(lower(email))", '(upper("Name"))']
    assert _folded(["email"], ["(lower((c.email)::text) = $1)", "(slower(c.email) = $1)"]) == []
