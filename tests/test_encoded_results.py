"""Pre-encoded representations: made once per version and coding, off the loop, never stale."""

from __future__ import annotations

import asyncio
import gzip
import os
from datetime import UTC, datetime, timedelta

import brotli
import orjson
import pytest
import zstandard

from service.cache.encoded import MAX_PENDING, EncodedResults, level_for
from service.cache.results import ResultCache
from service.db.results import ResultMeta, StoredResult

BODY = orjson.dumps({"rows": [{"id": n, "label": f"segment-{n % 17}"} for n in range(600)]})
DECODERS = {
    "zstd": lambda data: zstandard.ZstdDecompressor().decompress(data),
    "br": brotli.decompress,
    "gzip": gzip.decompress,
}
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def stored(body: bytes = BODY, version: int = 1, analysis_id: str = "run-1") -> StoredResult:
    moment = T0 + timedelta(seconds=version)
    return StoredResult(ResultMeta(analysis_id, version, T0, moment), body)


async def made(encoded: EncodedResults, count: int, timeout: float = 5.0) -> None:
    """Wait until ``count`` encodings have been made."""
    deadline = asyncio.get_running_loop().time() + timeout
    while encoded.made < count:
        assert asyncio.get_running_loop().time() < deadline, f"only {encoded.made} made"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
async def test_the_first_ask_schedules_and_later_asks_get_bytes_that_decode(coding: str) -> None:
    encoded = EncodedResults(1 << 20)
    try:
        assert encoded.get(stored(), coding) is None
        await made(encoded, 1)
        data = encoded.get(stored(), coding)
        assert data is not None
        assert DECODERS[coding](data) == BODY
        assert len(data) < len(BODY)
        assert encoded.get(stored(), coding) == data
        await asyncio.sleep(0.05)
        assert encoded.made == 1  # asked three times, made once
    finally:
        await encoded.aclose()


async def test_a_new_version_never_gets_the_previous_versions_bytes() -> None:
    encoded = EncodedResults(1 << 20)
    try:
        encoded.get(stored(version=1), "br")
        await made(encoded, 1)
        newer = stored(body=BODY.replace(b"segment", b"cluster"), version=2)
        assert encoded.get(newer, "br") is None
        await made(encoded, 2)
        data = encoded.get(newer, "br")
        assert data is not None
        assert brotli.decompress(data) == newer.body
    finally:
        await encoded.aclose()


async def test_the_same_version_number_with_another_update_time_is_another_entry() -> None:
    """Version 0 entries (and a database recreated elsewhere) repeat numbers."""
    encoded = EncodedResults(1 << 20)
    try:
        first = stored(version=0)
        encoded.get(first, "gzip")
        await made(encoded, 1)
        other = StoredResult(
            ResultMeta("run-1", 0, T0, T0 + timedelta(microseconds=1)), BODY + b" "
        )
        assert encoded.get(other, "gzip") is None
    finally:
        await encoded.aclose()


async def test_small_bodies_and_unknown_codings_are_not_encoded() -> None:
    encoded = EncodedResults(1 << 20, minimum_size=500)
    try:
        assert encoded.get(stored(body=b"x" * 499), "br") is None
        assert encoded.get(stored(), "deflate") is None
        await asyncio.sleep(0.05)
        assert encoded.made == 0
        assert len(encoded) == 0
    finally:
        await encoded.aclose()


async def test_a_body_that_does_not_shrink_is_encoded_once_and_then_left_alone() -> None:
    encoded = EncodedResults(1 << 20)
    noise = stored(body=os.urandom(4096))
    try:
        assert encoded.get(noise, "zstd") is None
        await made(encoded, 1)
        assert encoded.get(noise, "zstd") is None
        await asyncio.sleep(0.05)
        assert encoded.made == 1
    finally:
        await encoded.aclose()


async def test_pending_encodings_are_bounded_and_cancelled_on_close() -> None:
    encoded = EncodedResults(64 << 20)
    for n in range(MAX_PENDING + 50):
        encoded.get(stored(analysis_id=f"run-{n}", body=BODY + str(n).encode()), "br")
    await encoded.aclose()
    assert encoded.made < MAX_PENDING + 50
    assert len(encoded) == 0


async def test_memory_is_bounded_by_max_bytes() -> None:
    encoded = EncodedResults(4096)
    try:
        for n in range(20):
            encoded.get(stored(analysis_id=f"run-{n}"), "gzip")
            await made(encoded, n + 1)
        assert 0 < encoded.size_bytes <= 4096
    finally:
        await encoded.aclose()


@pytest.mark.parametrize(
    ("coding", "size", "level"),
    [
        ("br", 20_000, 11),
        ("br", 200_000, 9),
        ("br", 1_000_000, 6),
        ("br", 50_000_000, 4),
        ("zstd", 20_000, 19),
        ("zstd", 150_000, 15),
        ("zstd", 1_000_000, 9),
        ("zstd", 50_000_000, 3),
        ("gzip", 1_000_000, 9),
        ("gzip", 50_000_000, 6),
    ],
)
def test_the_level_is_the_best_one_within_the_time_budget(
    coding: str, size: int, level: int
) -> None:
    assert level_for(coding, size, budget=0.05) == level


async def test_result_cache_hands_out_encoded_bytes_only_when_it_has_them() -> None:
    without = ResultCache()
    with_encoded = ResultCache(encoded=EncodedResults(1 << 20))
    try:
        assert without.encoded(stored(), "br") is None
        assert with_encoded.encoded(stored(), "br") is None
        assert with_encoded.encoded_results is not None
        await made(with_encoded.encoded_results, 1)
        data = with_encoded.encoded(stored(), "br")
        assert data is not None
        assert brotli.decompress(data) == BODY
        stats = with_encoded.stats()
        assert (stats.encoded_entries, stats.encodings_made) == (1, 1)
        assert stats.encoded_bytes > len(data)
    finally:
        await without.aclose()
        await with_encoded.aclose()
