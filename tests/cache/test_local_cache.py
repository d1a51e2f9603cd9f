"""LocalCache, the in-process tier: bounded by bytes, least recently used first, TTLs."""

from __future__ import annotations

import pytest

from service.cache.local import ENTRY_OVERHEAD, LocalCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_and_the_least_recently_used_goes_first() -> None:
    clock = Clock()
    cache: LocalCache[str] = LocalCache(3 * (100 + 1 + ENTRY_OVERHEAD), clock)
    for key in "abc":
        assert cache.put(key, key.upper(), 100, ttl=10)
    assert cache.get("a") == "A"  # now b is the oldest
    cache.put("d", "D", 100, ttl=None)
    assert (cache.get("b"), cache.evictions, len(cache)) == (None, 1, 3)
    clock.now = 10
    assert cache.get("a") is None
    assert cache.get("c") is None
    assert cache.get("d") == "D"
    assert cache.size_bytes == 100 + 1 + ENTRY_OVERHEAD


def test_a_value_larger_than_the_budget_is_not_stored() -> None:
    cache: LocalCache[bytes] = LocalCache(1000)
    assert not cache.put("big", b"", 1000, None)
    assert cache.get("big") is None
    assert cache.size_bytes == 0


def test_charge_counts_growth_only_for_the_value_still_stored() -> None:
    cache: LocalCache[object] = LocalCache(2 * (500 + 1 + ENTRY_OVERHEAD))
    first, second = object(), object()
    cache.put("a", first, 100, None)
    cache.put("b", second, 100, None)
    cache.charge("a", first, 400)
    assert cache.size_bytes == 600 + 2 * (1 + ENTRY_OVERHEAD)
    cache.charge("a", second, 10_000)  # not the value under "a": ignored
    assert cache.size_bytes == 600 + 2 * (1 + ENTRY_OVERHEAD)
    cache.charge("b", second, 1000)  # over budget: the least recently used goes
    assert cache.get("a") is None
    assert cache.evictions == 1
    cache.discard("b")
    cache.clear()
    assert (len(cache), cache.size_bytes) == (0, 0)


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        LocalCache(-1)
