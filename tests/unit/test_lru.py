"""agent.lru.BoundedCache: the one LRU (binaries, frames, GOMAXPROCS addresses, ReplicaSet owners)."""

from __future__ import annotations

import pytest

from agent.lru import BoundedCache


def test_least_recently_used_goes_first_and_counts() -> None:
    c: BoundedCache[str, int] = BoundedCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the newest
    c.put("c", 3)
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3
    assert c.get("b") is None
    assert (len(c), c.hits, c.misses, c.evictions) == (2, 3, 1, 1)
    assert c.pop_oldest() == ("a", 1) and c.values() == [3]


def test_capacity_is_explicit() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BoundedCache[str, int](0)
