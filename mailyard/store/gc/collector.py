"""The collector's half of the protocol (see gc/__init__.py, C1-C4).

A run walks every blob key in bounded batches, pausing between them, and
collects those no owner links; then it tends the deletion records (takes over
claims of dead collectors, forgets tombstones older than `grace`).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from mailyard.policy.config import GcConfig
from mailyard.policy.logs import EventLog
from mailyard.store.blobs.base import BlobStore
from mailyard.store.delta import delta_owner
from mailyard.store.errors import NotFound
from mailyard.store.metadata.base import DELETION_DONE, DELETION_PENDING, MetadataStore

RECORDS_PAGE = 500


@dataclass
class GcReport:
    scanned: int = 0
    linked: int = 0
    freed_blobs: int = 0
    freed_bytes: int = 0
    busy: int = 0                  # claimed by another collector, or relinked meanwhile
    freed_keys: list[str] = field(default_factory=list)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Collector:
    def __init__(self, metadata: MetadataStore, blobs: BlobStore, config: GcConfig,
                 log: EventLog | None = None) -> None:
        self.metadata, self.blobs, self.config = metadata, blobs, config
        self.log = log or EventLog("gc")

    async def run(self, dry_run: bool = False, stop: asyncio.Event | None = None) -> GcReport:
        """One pass over every blob. A dry run only reports what is unlinked."""
        report = GcReport()
        batch: list[str] = []
        async for key in self.blobs.keys():
            batch.append(key)
            if len(batch) >= self.config.batch_size:
                await self._batch(batch, dry_run, report)
                batch = []
                if stop is not None and stop.is_set():
                    return report
                await asyncio.sleep(self.config.batch_pause)
        await self._batch(batch, dry_run, report)
        if not dry_run:
            await self.tend_records()
        return report

    async def _batch(self, keys: list[str], dry_run: bool, report: GcReport) -> None:
        for key in keys:
            report.scanned += 1
            if await self.metadata.blob_owners(key):
                report.linked += 1
                continue
            if dry_run:
                size = await self._size(key)
                if size is not None:
                    report.freed_blobs += 1
                    report.freed_bytes += size
                    report.freed_keys.append(key)
                continue
            size = await self.collect(key)
            if size is None:
                report.busy += 1
            else:
                report.freed_blobs += 1
                report.freed_bytes += size
                report.freed_keys.append(key)

    async def collect(self, key: str) -> int | None:
        """Deletes `key` if no owner links it (C1-C4); its size when it was
        deleted, None when it is linked, claimed, or was deleted recently."""
        claimed_ms = _now_ms()
        if not await self.metadata.claim_blob_deletion(key, claimed_ms):        # C1
            return None
        deleted = False
        try:
            if await self.metadata.blob_owners(key):                             # C2
                return None
            size = await self._size(key)
            base = await self._base_of(key)
            if _now_ms() - claimed_ms > self.config.claim_lease * 1000 / 2:
                self.log.warning("gc_claim_too_old", key=key)
                return None
            deleted = True  # from here on a failure may have deleted it
            await self.blobs.delete(key)                                         # C3
        finally:
            await self.metadata.end_blob_deletion(key, deleted, _now_ms())       # C4
        if base:  # the base no longer has to outlive this delta
            await self.metadata.unlink_blobs(delta_owner(key), [base])
        self.log.info("gc_freed", key=key, bytes=size)
        return size or 0

    async def tend_records(self) -> None:
        """Takes over claims whose collector died (deleting the blob if it is
        still unlinked) and forgets tombstones older than `grace`."""
        after = ""
        while True:
            records = await self.metadata.list_blob_deletions(RECORDS_PAGE, after)
            if not records:
                return
            now = _now_ms()
            for record in records:
                age = now - record.at_ms
                if record.state == DELETION_PENDING and age > self.config.claim_lease * 1000:
                    if not await self.metadata.blob_owners(record.key):
                        await self.blobs.delete(record.key)
                    await self.metadata.end_blob_deletion(record.key, True, now)
                elif record.state == DELETION_DONE and age > self.config.grace * 1000:
                    await self.metadata.forget_blob_deletion(record.key)
            after = records[-1].key

    async def _size(self, key: str) -> int | None:
        try:
            return len(await self.blobs.get(key))
        except NotFound:
            return None

    async def _base_of(self, key: str) -> str | None:
        """The base of a delta blob (store/delta.py), for stores that write deltas."""
        base_of = getattr(self.blobs, "base_of", None)
        if base_of is None:
            return None
        try:
            return await base_of(key)
        except NotFound:
            return None
