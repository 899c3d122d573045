"""A per-user Bloom filter of indexed terms, kept in the Cache port.

A query that needs a term the user has never received can be answered empty
without touching the index. A Bloom filter never says "absent" for a term it
holds, so the answer is never wrong; it may say "maybe" for a term it lacks
(then the index answers). The filter is scalable (layers that grow fourfold as
terms arrive), so a small mailbox costs a few kilobytes and a large one stays
near its target false-positive rate.

Only the indexer writes filters, and it adds a batch's terms before the batch
reaches the index, so a filter is always a superset of what is searchable. A
missing filter (evicted, never built, another process's in-memory cache)
means "ask the index", and the indexer rebuilds it from the index.
"""
from __future__ import annotations

import hashlib
import math
import struct

from mailyard.searchd.query import And, Node, Or, Text
from mailyard.store.cache.base import Cache

_MAGIC = b"MYB1"
_LAYER = struct.Struct("<IBII")  # bits, hashes, capacity, count
FIRST_CAPACITY = 4096
GROWTH = 4
FALSE_POSITIVE_RATE = 0.005


class _Layer:
    __slots__ = ("bits", "hashes", "capacity", "count", "data")

    def __init__(self, capacity: int, bits: int | None = None, hashes: int | None = None,
                 count: int = 0, data=None):
        self.capacity = capacity
        self.bits = bits or max(64, math.ceil(-capacity * math.log(FALSE_POSITIVE_RATE)
                                              / math.log(2) ** 2))
        self.hashes = hashes or max(1, round(self.bits / capacity * math.log(2)))
        self.count = count
        self.data = data if data is not None else bytearray((self.bits + 7) // 8)

    # Plain loops, not generators: adding a batch's terms is most of what the
    # indexer does besides extraction and the index write.
    def has(self, h1: int, h2: int) -> bool:
        data, bits = self.data, self.bits
        for i in range(self.hashes):
            p = (h1 + i * h2) % bits
            if not data[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def add(self, h1: int, h2: int) -> None:
        data, bits = self.data, self.bits
        for i in range(self.hashes):
            p = (h1 + i * h2) % bits
            data[p >> 3] |= 1 << (p & 7)
        self.count += 1


_LOW64 = (1 << 64) - 1


def _hash(term: str) -> tuple[int, int]:
    value = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=16).digest(), "little")
    return value & _LOW64, (value >> 64) | 1


class TermBloom:
    # Terms this object has added, so a long bulk load (reindex) does not hash
    # the common words of every batch again: most of a batch's terms are known.
    MEMO_LIMIT = 500_000

    def __init__(self, layers: list[_Layer] | None = None):
        self.layers = layers or [_Layer(FIRST_CAPACITY)]
        self._added: set[str] = set()

    def __contains__(self, term: str) -> bool:
        h1, h2 = _hash(term)
        return any(layer.has(h1, h2) for layer in self.layers)

    def add(self, term: str) -> None:
        h1, h2 = _hash(term)
        for layer in self.layers:
            if layer.has(h1, h2):
                return
        last = self.layers[-1]
        if last.count >= last.capacity:
            last = _Layer(last.capacity * GROWTH)
            self.layers.append(last)
        last.add(h1, h2)

    def update(self, terms) -> None:
        fresh = set(terms).difference(self._added)
        for term in fresh:
            self.add(term)
        if len(self._added) + len(fresh) > self.MEMO_LIMIT:
            self._added.clear()
        self._added |= fresh

    def to_bytes(self) -> bytes:
        chunks = [_MAGIC, struct.pack("<B", len(self.layers))]
        for layer in self.layers:
            chunks += [_LAYER.pack(layer.bits, layer.hashes, layer.capacity, layer.count),
                       bytes(layer.data)]
        return b"".join(chunks)

    @classmethod
    def from_bytes(cls, value: bytes, writable: bool = False) -> TermBloom:
        if value[:4] != _MAGIC:
            raise ValueError("not a term Bloom filter")
        view = memoryview(value)
        pos, layers = 5, []
        for _ in range(value[4]):
            bits, hashes, capacity, count = _LAYER.unpack_from(value, pos)
            pos += _LAYER.size
            size = (bits + 7) // 8
            data = view[pos:pos + size]
            layers.append(_Layer(capacity, bits, hashes, count,
                                 bytearray(data) if writable else data))
            pos += size
        return cls(layers)


def cannot_match(node: Node, bloom: TermBloom) -> bool:
    """True when the query needs a term the filter does not hold, so no
    document of the user can match it."""
    if isinstance(node, Text):
        return any(term not in bloom for term in node.terms)
    if isinstance(node, And):
        return any(cannot_match(c, bloom) for c in node.children)
    if isinstance(node, Or):
        return all(cannot_match(c, bloom) for c in node.children)
    return False  # negations, labels, dates...: the filter knows nothing of them


class BloomFilters:
    """The users' filters in the Cache; every failure of the cache reads as "no filter"."""

    def __init__(self, cache: Cache, ttl: float | None = None, log=None):
        self.cache, self.ttl, self.log = cache, ttl, log

    @staticmethod
    def key(user_id: str) -> str:
        return f"search-terms:{user_id.lower()}"

    async def load(self, user_id: str, writable: bool = False) -> TermBloom | None:
        try:
            value = await self.cache.get(self.key(user_id))
            return None if value is None else TermBloom.from_bytes(value, writable)
        except Exception as exc:
            if self.log:
                self.log.warning("bloom_read_failed", user=user_id, error=repr(exc))
            return None

    async def save(self, user_id: str, bloom: TermBloom) -> bool:
        try:
            await self.cache.set(self.key(user_id), bloom.to_bytes(), ttl=self.ttl)
            return True
        except Exception as exc:
            if self.log:
                self.log.warning("bloom_write_failed", user=user_id, error=repr(exc))
            return False

    async def drop(self, user_id: str) -> None:
        try:
            await self.cache.delete(self.key(user_id))
        except Exception as exc:
            if self.log:
                self.log.warning("bloom_drop_failed", user=user_id, error=repr(exc))
