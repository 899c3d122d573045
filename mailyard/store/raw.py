"""A stored message's raw bytes, rebuilt from its skeleton and part blobs.

Shared by the mailbox service (GetMessage RAW) and the search indexer.
"""
from __future__ import annotations

import asyncio

from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.mime import join


async def load_raw(blobs: BlobStore, skeleton_key: str) -> bytes:
    skeleton = events_pb2.Skeleton.FromString(await blobs.get(skeleton_key))
    keys = {s.blob_key for s in skeleton.segments if s.WhichOneof("kind") == "blob_key"}
    parts = dict(zip(keys, await asyncio.gather(*(blobs.get(k) for k in keys))))
    return join(skeleton, parts)
