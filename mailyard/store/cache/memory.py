"""Cache in this process: a dict with per-key expiry and LRU eviction.

Every method runs to completion without awaiting, so on one event loop each
call is atomic (`incr` included) without a lock. Counters are stored as ASCII
decimal bytes, as Redis does, so `get` after `incr` reads the same on both.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from mailyard.store.cache.base import Cache


class MemoryCache(Cache):
    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        # key -> (value, monotonic expiry or None); order is least recently used first
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        # Like Redis SET: a set without ttl also clears an earlier expiry.
        self._store(key, bytes(value), _expiry(ttl))

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        entry = self._live(key)
        if entry is None:
            value, expires = amount, _expiry(ttl)
        else:
            value, expires = int(entry[0]) + amount, entry[1]  # ValueError if not a number
        self._store(key, str(value).encode(), expires)
        return value

    async def close(self) -> None:
        self._entries.clear()

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        """The unexpired entry, marked most recently used; expired ones are dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _store(self, key: str, value: bytes, expires: float | None) -> None:
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


def _expiry(ttl: float | None) -> float | None:
    return None if ttl is None else time.monotonic() + ttl
