"""A least-recently-used cache bounded by bytes, for everything bpforch keeps in memory
across calls (parsed objects, parsed manifests, kernel BTF).

A count of entries bounds nothing when entries can be any size: 4,096 cached versions of
a 2 MB manifest are gigabytes. So every cache states the cost of each entry in bytes (an
estimate of the memory it holds, computed once when it is stored) and has a byte budget:
storing an entry evicts the least recently used ones until the total fits, and an entry
larger than the whole budget is not kept at all. An optional entry count bounds the
bookkeeping of many tiny entries. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["LRU", "Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a cache holds now, against its limits."""

    entries: int
    bytes: int
    max_bytes: int
    max_entries: int | None
    evictions: int  # entries dropped to stay within the limits, since made (or cleared)
    hits: int  # gets that found their key, since made (or cleared)


class LRU(Generic[K, V]):
    """``key -> value`` with at most ``max_bytes`` of stated costs (and ``max_entries``)."""

    def __init__(self, max_bytes: int, max_entries: int | None = None) -> None:
        if max_bytes < 0 or (max_entries is not None and max_entries < 0):
            raise ValueError("cache limits must not be negative")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._evictions = 0
        self._hits = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value for ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: K, value: V, cost: int) -> bool:
        """Store ``value`` (replacing what ``key`` held) and evict the least recently used
        entries until the limits hold. Returns False, storing nothing and dropping the old
        value of ``key``, when ``cost`` alone is over the budget."""
        cost = max(0, cost)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if cost > self.max_bytes or self.max_entries == 0:
                return False
            self._items[key] = (value, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes or (
                self.max_entries is not None and len(self._items) > self.max_entries
            ):
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
                self._evictions += 1
            return True

    def pop(self, key: K) -> V | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self._evictions = 0
            self._hits = 0

    def usage(self) -> Usage:
        with self._lock:
            return Usage(
                len(self._items),
                self._bytes,
                self.max_bytes,
                self.max_entries,
                self._evictions,
                self._hits,
            )
