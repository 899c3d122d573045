"""The Cache port: fast, lossy key/value state with expiry.

Nothing here is the source of truth: a cache that is empty, evicted or down
must only make things slower, never wrong.
"""
from __future__ import annotations

import abc


class Cache(abc.ABC):
    async def start(self) -> None:
        """Connects or creates what the adapter needs; called once before use."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        ...

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Stores a value, expiring after `ttl` seconds when given; without a ttl
        it never expires, even if the value it replaces would have (as Redis SET)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        ...

    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Adds atomically and returns the new value. A new key starts at 0 and
        gets the ttl; an existing key keeps its expiry (a fixed window). The
        counter reads back from `get` as ASCII decimal bytes (b"42"), and a value
        set that way can be incremented, as in Redis."""

    @abc.abstractmethod
    async def close(self) -> None:
        ...
