"""The one LRU map (recent CreateVolume/CreateSnapshot names, snapshot areas)."""

from __future__ import annotations

import pytest

from driver.lru import Lru


def test_forgets_the_least_recently_written_key() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 3)  # a is now the newest
    lru.put("c", 4)
    assert list(lru) == ["a", "c"]
    assert (lru.get("a"), lru.get("b"), len(lru)) == (3, None, 2)


def test_iteration_survives_changes() -> None:
    lru: Lru[int, None] = Lru(3)
    for key in range(3):
        lru.put(key, None)
    for key in lru:
        lru.put(key + 10, None)
    assert list(lru) == [10, 11, 12]


def test_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Lru(0)
