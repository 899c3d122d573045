"""The writer's half of the collection protocol (see gc/__init__.py, W2-W4).

Every path that stores blobs for an owner calls `link_and_secure` after its
puts and before the owner becomes visible.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from mailyard.store.blobs.base import BlobStore
from mailyard.store.errors import StorageError
from mailyard.store.metadata.base import DELETION_PENDING, MetadataStore

WAIT_POLL = 0.05        # seconds between looks at a pending deletion
WAIT_LIMIT = 10.0       # then the write fails and its caller retries later


async def link_and_secure(metadata: MetadataStore, blobs: BlobStore | None, owners: list[str],
                          keys: list[str], started: float,
                          restore: Callable[[], Awaitable[object]], *,
                          grace: float, claim_lease: float) -> None:
    """Links `keys` to each owner, then makes sure no collector deleted one
    of them meanwhile: `restore()` writes them all again if any is missing.
    `started` is time.monotonic() taken before the blobs were put. Without
    `blobs` (a writer whose blobs are written elsewhere) it restores whenever
    one may be missing."""
    keys = sorted(set(keys))
    if not keys:
        return
    for owner in owners:
        await metadata.link_blobs(owner, keys)
    records = await _settled_records(metadata, keys, claim_lease)
    if not records and time.monotonic() - started < grace / 2:
        return
    suspects = keys if time.monotonic() - started >= grace / 2 else sorted(records)
    present = await asyncio.gather(*(blobs.exists(k) for k in suspects)) if blobs else [False]
    if not all(present):
        await restore()


async def _settled_records(metadata: MetadataStore, keys: list[str],
                           claim_lease: float) -> dict:
    """The deletion records of `keys` once none is pending; a claim older
    than the lease (its collector died) is turned into a tombstone here."""
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        records = await metadata.blob_deletions(keys)
        now_ms = int(time.time() * 1000)
        pending = [r for r in records.values() if r.state == DELETION_PENDING]
        for record in pending:
            if now_ms - record.at_ms > claim_lease * 1000:
                await metadata.end_blob_deletion(record.key, True, now_ms)
        if not pending:
            return records
        if time.monotonic() > deadline:
            raise StorageError(f"blob {pending[0].key} is being deleted by the garbage collector;"
                               " try again")
        await asyncio.sleep(WAIT_POLL)
