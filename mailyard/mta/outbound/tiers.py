"""Delay tiers: one topic per retry step, whose consumer puts each record back
on mail.outbound once it is due.

All records of a tier wait the same time, so the head of each partition is the
next one due: the consumer releases the due records at the head, then waits for
the next head, in slices of at most a second with a rewind and a fetch
between them, so that it keeps its group membership while it waits (a member
that stops fetching loses its partitions). Nothing is committed before it is
republished, so a crash republishes at worst twice; the worker skips the copy.
"""
from __future__ import annotations

import asyncio
import time
from itertools import groupby

from google.protobuf.message import DecodeError

from mailyard.mta.outbound.schedule import tier_topic
from mailyard.policy.logs import EventLog
from mailyard.proto import events_pb2
from mailyard.store.errors import StorageError
from mailyard.store.metadata.base import OUTBOUND_HELD, MetadataStore
from mailyard.store.outbox import OUTBOUND_TOPIC
from mailyard.store.queue.base import Consumer, Queue, Record
from mailyard.store.queue.consume import OUTAGE_PAUSE, sleep_unless

GROUP = "outbound"
BATCH = 100
SLICE = 1.0  # seconds: the longest wait between two fetches


class DelayTier:
    def __init__(self, delay: float, queue: Queue, metadata: MetadataStore, log: EventLog):
        self.delay, self.topic = delay, tier_topic(delay)
        self.queue, self.metadata, self.log = queue, metadata, log

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await self.queue.consumer(self.topic, GROUP)
        try:
            while not stop.is_set():
                # A short wait: a log server may need a moment after a rewind.
                records = await consumer.fetch(BATCH, timeout=0.2)
                if not records:
                    await sleep_unless(stop, SLICE)
                    continue
                try:
                    wait = await self.release(consumer, records)
                except StorageError as exc:
                    self.log.error("storage_unavailable", tier=self.topic, error=str(exc))
                    await consumer.rewind()
                    await sleep_unless(stop, OUTAGE_PAUSE)
                    continue
                if wait > 0:  # a head is not due: look again later, from the committed offsets
                    await sleep_unless(stop, min(wait, SLICE))
                    await consumer.rewind()
        finally:
            await consumer.close()

    async def release(self, consumer: Consumer, records: list[Record]) -> float:
        """Republishes the due records at the head of each partition and
        commits them; returns the seconds until the first head not yet due
        (0 when every record was released)."""
        now_ms = int(time.time() * 1000)
        released, wait_ms = [], 0
        ordered = sorted(records, key=lambda r: (r.partition, r.offset))
        for _, in_partition in groupby(ordered, key=lambda r: r.partition):
            for record in in_partition:
                try:
                    envelope = events_pb2.OutboundEnvelope.FromString(record.value)
                except DecodeError:
                    self.log.error("undecodable_record", tier=self.topic, offset=record.offset)
                    released.append(record)
                    continue
                if envelope.not_before_ms > now_ms:
                    remaining = envelope.not_before_ms - now_ms
                    wait_ms = min(wait_ms, remaining) if wait_ms else remaining
                    break
                await self._put_back(envelope, record)
                released.append(record)
        if released:
            await consumer.commit(released)
        return wait_ms / 1000

    async def _put_back(self, envelope: events_pb2.OutboundEnvelope, record: Record) -> None:
        entry = await self.metadata.get_outbound(envelope.queue_id)
        if entry is None or entry.generation != envelope.generation:
            return  # delivered, deleted or rescheduled since: stale
        if entry.state == OUTBOUND_HELD:
            return  # `queue release` puts it back itself
        await self.queue.publish(OUTBOUND_TOPIC, record.key, record.value)
        self.log.info("due", queue_id=envelope.queue_id, tier=self.topic,
                      attempt=envelope.attempt + 1)
