"""The columns an UPDATE statement's text sets, read from pg_stat_statements' text.

The index advisor needs them because of heap-only tuples (HOT): PostgreSQL updates a
row without touching any index when no column of any index changes and the new
version fits on the same page. An index on a column the workload updates takes that
away from every such update, and each then writes an entry into every index of the
table; an index on columns no update sets costs such updates nothing.

This is a tokenizer, not a parser: it reads the ``SET`` list of an ``UPDATE`` at the
statement's top level, and answers None whenever the text is not plainly such a list,
so that the caller falls back to assuming the statement may change any column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<string>[eE]?'(?:[^'\\]|''|\\.)*')
  | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)
  | (?P<word>[^\W\d][\w$]*)
  | (?P<other>\$\d+|::|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ENDS_ASSIGNMENTS = frozenset({"from", "where", "returning"})
"""Keywords that end a SET list at its own level."""


def updated_columns(query: str) -> frozenset[str] | None:
    """The names of the columns ``query`` assigns, if it is an ``UPDATE``, as the
    catalog spells them (an unquoted name in lower case); None for any other
    statement, or where the text cannot be read plainly."""
    tokens = list(_tokens(query))
    if not tokens or tokens[0] != ("word", "update"):
        return None
    start = _top_level_set(tokens, 1)
    return None if start is None else _assigned(tokens, start)


def _tokens(query: str) -> Iterator[tuple[str, str]]:
    """(kind, text) for each token, keywords and unquoted names folded, quoted
    names unquoted; a ``("depth", "(")`` or ``("depth", ")")`` for each parenthesis."""
    position = 0
    while position < len(query):
        found = _TOKEN.match(query, position)
        assert found is not None  # ``other`` takes any one character
        position = found.end()
        kind = found.lastgroup
        value = found.group()
        if kind == "space":
            continue
        if kind == "quoted":
            yield ("name", value[1:-1].replace('""', '"'))
        elif kind == "word":
            # PostgreSQL folds only ASCII letters of an unquoted name.
            yield ("word", value.translate(_ASCII_LOWER))
        elif value in ("(", ")", "[", "]"):
            yield ("depth", value)
        else:
            yield ("other", value)


def _levels(tokens: list[tuple[str, str]], start: int) -> Iterator[tuple[int, int]]:
    """(index, depth) of each token from ``start``, depth counted from 0 there."""
    depth = 0
    for index in range(start, len(tokens)):
        kind, value = tokens[index]
        if kind == "depth" and value in ("(", "["):
            yield index, depth
            depth += 1
        elif kind == "depth":
            depth -= 1
            yield index, depth
        else:
            yield index, depth


def _top_level_set(tokens: list[tuple[str, str]], start: int) -> int | None:
    """The index after the first top-level ``SET`` from ``start``."""
    for index, depth in _levels(tokens, start):
        if depth == 0 and tokens[index] == ("word", "set"):
            return index + 1
    return None


def _assigned(tokens: list[tuple[str, str]], start: int) -> frozenset[str] | None:
    """The targets of the SET list that begins at ``start``: ``col = ...`` (also
    ``col[1]`` or ``col.field``: the column is ``col``) and ``(a, b) = ...``, separated
    by top-level commas, up to a keyword that ends the list or the end of the text."""
    columns: set[str] = set()
    expecting_target = True
    levels = _levels(tokens, start)
    for index, depth in levels:
        kind, value = tokens[index]
        if expecting_target:
            if kind in ("word", "name"):
                columns.add(value)
            elif (kind, value) == ("depth", "("):
                names = _name_list(tokens, index + 1)
                if names is None:
                    return None
                columns |= names
                # Step over the list: its closing parenthesis brings the depth back.
                for _, inner in levels:
                    if inner == 0:
                        break
            else:
                return None
            expecting_target = False
        elif depth == 0 and kind == "other" and value == ",":
            expecting_target = True
        elif depth == 0 and kind == "word" and value in _ENDS_ASSIGNMENTS:
            if value == "from" and tokens[index - 1] == ("word", "distinct"):
                continue  # IS [NOT] DISTINCT FROM, inside an expression
            break
    return None if expecting_target or not columns else frozenset(columns)


def _name_list(tokens: list[tuple[str, str]], start: int) -> set[str] | None:
    """The names of ``a, b, c)`` from ``start``; None if anything else is there."""
    names: set[str] = set()
    for kind, value in tokens[start:]:
        if kind in ("word", "name"):
            names.add(value)
        elif (kind, value) == ("depth", ")"):
            return names or None
        elif (kind, value) != ("other", ","):
            return None
    return None
