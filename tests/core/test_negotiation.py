"""Accept-Encoding negotiation, case by case (RFC 9110 section 12.5.3)."""

from __future__ import annotations

import pytest

from service.core.negotiation import negotiate, parse_accept_encoding

SERVER = ("zstd", "br", "gzip")

CASES = [
    # (Accept-Encoding, chosen coding, why)
    (None, "identity", "missing header: identity"),
    ("", "identity", "empty header: no coding wanted"),
    ("gzip", "gzip", "one coding"),
    ("GZIP", "gzip", "names are case-insensitive"),
    (" gzip ,  br ", "br", "whitespace; equal q, server order (zstd, br, gzip)"),
    ("gzip, br, zstd", "zstd", "equal q: the server's order decides"),
    ("gzip;q=1, br;q=0.5", "gzip", "client preference before server order"),
    ("br;q=0.5, gzip;q=0.8, zstd;q=0.1", "gzip", "highest q wins"),
    ("gzip;q=0", "identity", "q=0 excludes; identity stays acceptable"),
    ("gzip;Q=0", "identity", "the q parameter name is case-insensitive"),
    ("gzip ; q = 0.5", "gzip", "whitespace around ; and ="),
    ("*", "zstd", "* stands for every coding"),
    ("*;q=0", None, "*;q=0 excludes everything, identity included"),
    ("*;q=0, identity", "identity", "identity named explicitly beats *;q=0"),
    ("gzip;q=0, *", "zstd", "* covers what is not named; gzip stays excluded"),
    ("gzip, *;q=0", "gzip", "a named coding beats *;q=0"),
    ("identity;q=0", None, "only identity named, and excluded"),
    ("identity;q=0, gzip;q=0", None, "everything we have is excluded"),
    ("identity, gzip;q=0.5", "identity", "the client prefers identity"),
    ("gzip, identity", "gzip", "equal q: compression before identity"),
    ("gzip;q=abc", "identity", "a malformed q drops the element"),
    ("gzip;q=2", "identity", "q above 1 is malformed"),
    ("gzip;q=0.1234", "identity", "more than three decimals is malformed"),
    ("gzip;q=abc, br", "br", "only the malformed element is dropped"),
    ("gzip;q=1.000", "gzip", "1.000 is a valid qvalue"),
    ("notgzip", "identity", "an unknown coding is not a prefix match"),
    ("x-gzip", "gzip", "x-gzip means gzip"),
    ("deflate, compress", "identity", "codings we do not have"),
    ("br;level=4;q=0.9, gzip;q=0.8", "br", "other parameters are ignored"),
    (",,gzip,,", "gzip", "empty list elements are skipped"),
]


@pytest.mark.parametrize(("header", "chosen", "why"), CASES, ids=[c[2] for c in CASES])
def test_negotiation(header: str | None, chosen: str | None, why: str) -> None:
    assert negotiate(header, SERVER) == chosen, why


def test_the_server_order_is_the_setting() -> None:
    assert negotiate("gzip, br", ("gzip", "br")) == "gzip"
    assert negotiate("gzip, br", ("br", "gzip")) == "br"
    assert negotiate("zstd", ("br", "gzip")) == "identity", "zstd not offered"


def test_a_coding_named_twice_keeps_its_highest_q() -> None:
    assert parse_accept_encoding("gzip;q=0.2, GZIP;q=0.7") == {"gzip": 0.7}


def test_a_10_kb_header_is_parsed_correctly() -> None:
    header = ", ".join(f"x-coding-{n};q=0.{n % 10}" for n in range(700)) + ", br;q=0.9"
    assert len(header) > 10_000
    assert negotiate(header, SERVER) == "br"


def test_an_unnamed_identity_is_the_last_resort() -> None:
    assert negotiate("gzip;q=0.001", SERVER) == "gzip"
