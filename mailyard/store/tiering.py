"""Moving old mail's blobs to the cold tier: `mailyard tier run` and the
`tiering` service, which runs it every `tiering.interval` seconds.

A message received more than `tiering.after_days` ago has its blobs
(skeleton, parts, attachments, delta bases) moved to the cold tier; its
metadata stays where it is and reads stay transparent (TieredBlobStore reads
hot, then cold). A blob shared with a newer message, or linked by anything
but messages (a spool, an outbound entry), stays hot: moving it would slow
the mail people still read. Every run walks all messages, so an interrupted
run is simply run again.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.blobs.tiered import TieredBlobStore
from mailyard.store.delta import DELTA_OWNER
from mailyard.store.errors import NotFound
from mailyard.store.metadata.base import MessageRecord, MetadataStore

PAGE = 500


@dataclass
class TierReport:
    messages: int = 0          # old messages looked at
    moved_blobs: int = 0
    moved_bytes: int = 0       # stored (sealed) bytes
    kept_hot: int = 0          # shared with newer mail or not owned by messages


def tiers_of(blobs: BlobStore) -> TieredBlobStore | None:
    """The tiered layer under the sealing layer, if tiering is configured."""
    while not isinstance(blobs, TieredBlobStore):
        blobs = getattr(blobs, "inner", None)
        if blobs is None:
            return None
    return blobs


async def message_blobs(blobs: BlobStore, record: MessageRecord) -> set[str]:
    """Every blob reading the message touches."""
    keys = {record.skeleton_key, *(a.blob_key for a in record.attachments if a.blob_key)}
    try:
        skeleton = events_pb2.Skeleton.FromString(await blobs.get(record.skeleton_key))
    except NotFound:
        return set()
    keys |= {s.blob_key for s in skeleton.segments if s.WhichOneof("kind") == "blob_key"}
    base_of = getattr(blobs, "base_of", None)
    pending = list(keys)
    while base_of and pending:
        try:
            base = await base_of(pending.pop())
        except NotFound:
            continue
        if base and base not in keys:
            keys.add(base)
            pending.append(base)
    return keys


class Tierer:
    def __init__(self, config: Config, metadata: MetadataStore, blobs: BlobStore,
                 log: EventLog | None = None) -> None:
        self.metadata, self.blobs = metadata, blobs
        self.after_ms = int(config.tiering.after_days * 86400 * 1000)
        self.log = log or EventLog("tiering")
        self._age: dict[str, bool] = {}  # owner -> old enough, within one run

    async def run(self, now_ms: int | None = None,
                  stop: asyncio.Event | None = None) -> TierReport:
        tiers = tiers_of(self.blobs)
        report = TierReport()
        if tiers is None:
            return report
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.after_ms
        self._age = {}
        for user in await self.metadata.list_users():
            after = None
            while records := await self.metadata.list_all_messages(user.address, PAGE, after):
                after = (records[-1].received_at_ms, records[-1].message_id)
                for record in records:
                    if record.received_at_ms < cutoff:
                        report.messages += 1
                        await self._move(tiers, record, cutoff, report)
                if stop is not None and stop.is_set():
                    return report
        self.log.info("tier_run", messages=report.messages, moved_blobs=report.moved_blobs,
                      moved_bytes=report.moved_bytes, kept_hot=report.kept_hot)
        return report

    async def _move(self, tiers: TieredBlobStore, record: MessageRecord, cutoff: int,
                    report: TierReport) -> None:
        for key in sorted(await message_blobs(self.blobs, record)):
            if not await tiers.is_hot(key):
                continue
            if not await self._only_old_owners(key, cutoff):
                report.kept_hot += 1
                continue
            try:
                size = len(await tiers.hot.get(key))
            except NotFound:
                continue
            if await tiers.move_to_cold(key):
                report.moved_blobs += 1
                report.moved_bytes += size

    async def _only_old_owners(self, key: str, cutoff: int) -> bool:
        for owner in await self.metadata.blob_owners(key):
            if owner.startswith(DELTA_OWNER):
                continue  # a delta's messages link its base themselves
            if owner not in self._age:
                self._age[owner] = await self._is_old(owner, cutoff)
            if not self._age[owner]:
                return False
        return True

    async def _is_old(self, owner: str, cutoff: int) -> bool:
        user_id, _, message_id = owner.rpartition("/")
        if "@" not in user_id:
            return False  # a spool or an outbound entry: in flight, keep it hot
        record = await self.metadata.get_message(user_id, message_id)
        return record is None or record.received_at_ms < cutoff


async def serve(config: Config, stores, stop: asyncio.Event, ready=None) -> None:
    """Runs the tier mover now and then every `tiering.interval` seconds."""
    log = EventLog("tiering")
    tierer = Tierer(config, await stores.metadata(), await stores.blobs(), log)
    if ready:
        ready(None)
    while not stop.is_set():
        try:
            await tierer.run(stop=stop)
        except Exception as exc:  # a backend outage: try again next time
            log.warning("tier_run_failed", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), config.tiering.interval)
        except asyncio.TimeoutError:
            pass
