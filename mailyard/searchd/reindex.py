"""`mailyard search reindex [USER]`: rebuild the index from the source of truth.

For recovery (a lost or damaged index) and for moving to another adapter:
each user's documents are dropped, then every message the MetadataStore
holds is read back from the BlobStore, extracted and written in batches. The
running indexer may go on meanwhile: writes are idempotent either way.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.searchd.bloom import BloomFilters
from mailyard.searchd.extract import Limits, document
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
                  progress: Progress | None = None, batch_size: int = 500) -> int:
    """Rebuilds the index of `users` (every user when None); returns the
    number of messages indexed."""
    log = EventLog("reindex")
    metadata, blobs = await stores.metadata(), await stores.blobs()
    index = await shared_index(config, stores)
    blooms = BloomFilters(await stores.cache())
    limits = Limits(config.search.max_attachment_bytes, config.search.max_text_chars)
    if users is None:
        users = [user.address for user in await metadata.list_users()]
    indexed = 0
    for position, user_id in enumerate(users, 1):
        user_id = user_id.lower()
        total = await _count(metadata, user_id)
        await blooms.drop(user_id)  # rebuilt from the new index by the indexer
        await index.delete_user(user_id)
        started, done, after = time.monotonic(), 0, None
        while records := await metadata.list_all_messages(user_id, batch_size, after):
            after = (records[-1].received_at_ms, records[-1].message_id)
            documents = []
            for record in records:
                try:
                    raw = await load_raw(blobs, record.skeleton_key)
                except NotFound:
                    log.error("message_blobs_missing", user=user_id, message_id=record.message_id)
                    continue
                documents.append(document(record, raw, limits, log))
            await index.write(documents)
            done += len(records)
            if progress:
                progress.show(user_id, position, len(users), done, total, started)
        indexed += done
        if progress:
            progress.show(user_id, position, len(users), done, total, started, final=True)
        log.info("reindexed", user=user_id, messages=done)
    return indexed


async def _count(metadata, user_id: str) -> int:
    count, after = 0, None
    while records := await metadata.list_all_messages(user_id, 5000, after):
        count += len(records)
        after = (records[-1].received_at_ms, records[-1].message_id)
    return count
