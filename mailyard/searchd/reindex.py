"""`mailyard search reindex [USER]`: rebuild the index from the source of truth.

For recovery (a lost or damaged index) and for moving to another adapter:
each user's documents are dropped, then every message the MetadataStore
holds is read back from the BlobStore, extracted and written in batches
(extraction on worker processes, overlapping the writes: searchd/bulk.py).
The running indexer may go on meanwhile: writes are idempotent either way.

The user's Bloom filter is dropped first (no filter means "ask the index").
Should the indexer rebuild it from the half-built index meanwhile, each later
batch's terms are added to it before the batch is written, so it stays a
superset of what is searchable.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import TextIO

from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.searchd.bloom import BloomFilters
from mailyard.searchd.bulk import Batch, Extractor, Item, write_overlapped
from mailyard.searchd.extract import Limits
from mailyard.searchd.index import shared_index
from mailyard.store.errors import NotFound
from mailyard.store.raw import load_raw


class Progress:
    """One line per user, redrawn in place on a terminal."""

    def __init__(self, out: TextIO = sys.stderr):
        self.out, self.tty = out, out.isatty()

    def show(self, user: str, position: int, users: int, done: int, total: int,
             started: float, final: bool = False) -> None:
        width = 30
        filled = width if not total else width * done // total
        rate = done / max(time.monotonic() - started, 1e-6)
        line = (f"[{position}/{users}] {user} [{'#' * filled}{'.' * (width - filled)}] "
                f"{done}/{total} messages, {rate:.0f}/s")
        if self.tty:
            self.out.write("\r" + line + ("\n" if final else ""))
        elif final:
            self.out.write(line + "\n")
        self.out.flush()


async def reindex(config: Config, stores, users: list[str] | None = None,
                  progress: Progress | None = None, batch_size: int = 1000,
                  processes: int | None = None) -> int:
    """Rebuilds the index of `users` (every user when None); returns the
    number of messages indexed. `processes` extract text (default: one per
    core; 0 extracts on a thread of this process)."""
    log = EventLog("reindex")
    metadata, blobs = await stores.metadata(), await stores.blobs()
    index = await shared_index(config, stores)
    blooms = BloomFilters(await stores.cache())
    limits = Limits(config.search.max_attachment_bytes, config.search.max_text_chars)
    whole = users is None
    if whole:
        users = [user.address for user in await metadata.list_users()]
    if processes is None:
        processes = os.cpu_count() or 1
    async with index.rebuilding() if whole else contextlib.nullcontext():
        return await _reindex_users(index, metadata, blobs, blooms, limits, processes,
                                    users, progress, batch_size, log)


async def _reindex_users(index, metadata, blobs, blooms, limits, processes, users, progress,
                         batch_size, log) -> int:
    indexed = 0
    with Extractor(limits, processes) as extractor:
        for position, user_id in enumerate(users, 1):
            user_id = user_id.lower()
            total = await _count(metadata, user_id)
            await blooms.drop(user_id)
            await index.delete_user(user_id)
            started, done = time.monotonic(), 0

            async def item_batches():
                nonlocal done
                after = None
                while records := await metadata.list_all_messages(user_id, batch_size, after):
                    after = (records[-1].received_at_ms, records[-1].message_id)
                    yield await _load(blobs, records, log)
                    done += len(records)
                    if progress:
                        progress.show(user_id, position, len(users), done, total, started)

            async def learn(batch: Batch) -> None:
                bloom = await blooms.load(user_id, writable=True)
                if bloom is not None:  # the indexer rebuilt one meanwhile: keep it whole
                    bloom.update(batch.terms)
                    if not await blooms.save(user_id, bloom):
                        await blooms.drop(user_id)

            await write_overlapped(index, extractor.stream(item_batches()), learn)
            indexed += done
            if progress:
                progress.show(user_id, position, len(users), done, total, started, final=True)
            log.info("reindexed", user=user_id, messages=done)
    return indexed


async def _load(blobs, records, log: EventLog, concurrency: int = 16) -> list[Item]:
    """The batch's raw messages, read CONCURRENCY at a time (S3 is a round trip each)."""
    limit = asyncio.Semaphore(concurrency)

    async def one(record):
        async with limit:
            try:
                return record, await load_raw(blobs, record.skeleton_key)
            except NotFound:
                log.error("message_blobs_missing", user=record.user_id,
                          message_id=record.message_id)
                return None

    return [item for item in await asyncio.gather(*map(one, records)) if item is not None]


async def _count(metadata, user_id: str) -> int:
    count, after = 0, None
    while records := await metadata.list_all_messages(user_id, 5000, after):
        count += len(records)
        after = (records[-1].received_at_ms, records[-1].message_id)
    return count
