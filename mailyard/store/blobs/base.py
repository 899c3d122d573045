"""The BlobStore port: immutable, content-addressed bytes.

A blob's key is `sha256/<hex of its bytes>`, so writing the same bytes twice
stores them once and a replayed write is harmless.
"""
from __future__ import annotations

import abc
import hashlib
from typing import AsyncIterator


def blob_key(data: bytes) -> str:
    return "sha256/" + hashlib.sha256(data).hexdigest()


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
    async def exists(self, key: str) -> bool:
        ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Removes a blob; deleting a missing blob is not an error."""

    @abc.abstractmethod
    async def close(self) -> None:
        ...
