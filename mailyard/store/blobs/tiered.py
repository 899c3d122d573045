"""A BlobStore over two tiers: hot for new blobs, cold for old mail's blobs.

New blobs go to hot; `move_to_cold` copies a blob's stored bytes (sealed,
untouched) to cold, then deletes it from hot, so at every moment a reader
finds it in one tier or both: reads try hot, then cold. Deletes remove a
blob from both tiers, so the garbage collector needs no notion of tiers; a
collector deleting a blob while it moves may leave a cold copy without owners,
which its next pass deletes (listing walks both tiers).
"""
from __future__ import annotations

from typing import AsyncIterator

from mailyard.store.blobs.base import BlobStore, blob_key, key_digest
from mailyard.store.errors import NotFound


class TieredBlobStore(BlobStore):
    def __init__(self, hot: BlobStore, cold: BlobStore) -> None:
        self.hot = hot
        self.cold = cold

    async def start(self) -> None:
        await self.hot.start()
        await self.cold.start()

    async def put(self, data: bytes) -> str:
        key = blob_key(data)
        if not await self.cold.exists(key):
            await self.hot.put_as(key, data)
        return key

    async def put_as(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """A replacement (re-sealing) goes to the tier the blob is in, so it
        does not come back to hot; a new blob goes to hot."""
        key_digest(key)
        if await self.hot.exists(key):
            await self.hot.put_as(key, data, replace=replace)
        elif await self.cold.exists(key):
            if replace:
                await self.cold.put_as(key, data, replace=True)
        else:
            await self.hot.put_as(key, data, replace=replace)

    async def get(self, key: str) -> bytes:
        try:
            return await self.hot.get(key)
        except NotFound:
            return await self.cold.get(key)

    async def keys(self) -> AsyncIterator[str]:
        seen = set()
        async for key in self.hot.keys():
            seen.add(key)
            yield key
        async for key in self.cold.keys():
            if key not in seen:
                yield key

    async def exists(self, key: str) -> bool:
        return await self.hot.exists(key) or await self.cold.exists(key)

    async def delete(self, key: str) -> None:
        await self.hot.delete(key)
        await self.cold.delete(key)

    async def close(self) -> None:
        try:
            await self.hot.close()
        finally:
            await self.cold.close()

    async def move_to_cold(self, key: str) -> bool:
        """Moves one blob to cold; False when it was not in hot."""
        try:
            stored = await self.hot.get(key)
        except NotFound:
            return False
        await self.cold.put_as(key, stored, replace=True)
        await self.hot.delete(key)
        return True

    async def is_hot(self, key: str) -> bool:
        return await self.hot.exists(key)
