"""A size-bounded mapping that forgets the least recently written key first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most ``limit`` entries; :meth:`put` makes a key the newest."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            msg = "an LRU map needs room for at least one entry"
            raise ValueError(msg)
        self._limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        """Keys, oldest first (a copy: the map may change meanwhile)."""
        return iter(list(self._items))
