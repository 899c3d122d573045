"""The BlobStore port: immutable, content-addressed bytes.

A blob's key is `sha256/<hex of its bytes>`, so writing the same bytes twice
stores them once and a replayed write is harmless. Every adapter refuses any
other key with ValueError (`key_digest`).
"""
from __future__ import annotations

import abc
import hashlib
import re
from typing import AsyncIterator

_KEY = re.compile(r"sha256/([0-9a-f]{64})")


def blob_key(data: bytes) -> str:
    return "sha256/" + hashlib.sha256(data).hexdigest()


def key_digest(key: str) -> str:
    """The hex digest a key names; ValueError for anything but
    `sha256/<64 lowercase hex>`, so no key can name a file or object outside
    the store."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"invalid blob key: {key!r}")
    return match.group(1)


class BlobStore(abc.ABC):
    async def start(self) -> None:
        """Connects or creates what the adapter needs; called once before use."""

    @abc.abstractmethod
    async def put(self, data: bytes) -> str:
        """Stores the bytes durably (on disk or acknowledged) and returns their key."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The bytes of a blob; NotFound when there is none."""

    async def stream(self, key: str, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        """The bytes of a blob in chunks; adapters may override to avoid
        holding a large blob in memory."""
        data = await self.get(key)
        for i in range(0, len(data), chunk_size):
            yield data[i:i + chunk_size]

    @abc.abstractmethod
    async def put_as(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """Stores `data` under a key the caller derived: a layer that
        transforms the bytes (sealing) or moves them between tiers keeps the
        key of the original bytes. An existing blob is kept unless `replace`."""

    @abc.abstractmethod
    def keys(self) -> AsyncIterator[str]:
        """Every blob key, in no particular order, for sweeps that must see
        every blob (garbage collection, tiering, key rotation). A blob put or
        deleted during the walk may or may not appear."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Removes a blob; deleting a missing blob is not an error."""

    @abc.abstractmethod
    async def close(self) -> None:
        ...
