"""A fixed-size Bloom filter of strings, serialized to bytes for the Cache port.

It never says "absent" for a string it holds; it may say "maybe" for one it
lacks (at about FALSE_POSITIVE_RATE once it holds its capacity), so a
"maybe" is always confirmed by an exact lookup.
"""
from __future__ import annotations

import hashlib
import math
import struct

FALSE_POSITIVE_RATE = 0.01
MAX_HASHES = 16   # a filter far below its capacity needs no more
_HEADER = struct.Struct("<4sIB")   # magic, bits, hashes
_MAGIC = b"MYS1"


class BloomFilter:
    def __init__(self, capacity: int, bits: int | None = None, hashes: int | None = None,
                 data: bytearray | None = None):
        capacity = max(capacity, 1)
        self.bits = bits or max(1024, math.ceil(-capacity * math.log(FALSE_POSITIVE_RATE)
                                                / math.log(2) ** 2))
        self.hashes = hashes or max(1, min(MAX_HASHES, round(self.bits / capacity * math.log(2))))
        self.data = data if data is not None else bytearray((self.bits + 7) // 8)

    def _positions(self, item: str):
        digest = hashlib.blake2b(item.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:], "little") | 1
        return ((h1 + i * h2) % self.bits for i in range(self.hashes))

    def add(self, item: str) -> None:
        for p in self._positions(item):
            self.data[p >> 3] |= 1 << (p & 7)

    def __contains__(self, item: str) -> bool:
        return all(self.data[p >> 3] & (1 << (p & 7)) for p in self._positions(item))

    def to_bytes(self) -> bytes:
        return _HEADER.pack(_MAGIC, self.bits, self.hashes) + bytes(self.data)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "BloomFilter | None":
        """None for bytes that are not a filter (another version, a torn write)."""
        if len(blob) < _HEADER.size:
            return None
        magic, bits, hashes = _HEADER.unpack_from(blob)
        data = bytearray(blob[_HEADER.size:])
        if magic != _MAGIC or not bits or len(data) != (bits + 7) // 8:
            return None
        return cls(1, bits, hashes, data)
