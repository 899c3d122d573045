"""The delivery worker: from the mail.inbound log into mailboxes.

For each envelope: split the spooled raw message into a skeleton and shared
part blobs, write one metadata record per recipient, refresh the inbox head in
the cache, announce the message on mail.index, and only then commit the queue
offset. Every step is idempotent (content-addressed blobs, deterministic
message ids, insert-if-absent metadata), so a crash anywhere just replays the
batch and stores each message exactly once.
"""
from __future__ import annotations

import asyncio
import hashlib
import time

from mailyard.store.delta import (ParentBlobs, delta_owner, find_parent, parent_blobs,
                                  supports_delta)
from mailyard.store.messages import find_thread, store_content
from mailyard.store.gc.collector import Collector
from mailyard.store.gc.links import link_and_secure
from mailyard.store.spool import INBOUND_TOPIC, spool_owner
from mailyard.store import trace
from mailyard.policy import metrics
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.proto import events_pb2
from mailyard.spam.stage import SpamStage
from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.errors import NotFound, StorageError
from mailyard.store.mailbox.inbox_cache import InboxCache
from mailyard.store.metadata.base import MessageRecord, MetadataStore
from mailyard.store.queue.base import Queue, Record
from mailyard.store.queue.consume import consume

GROUP = "delivery"
INDEX_TOPIC = "mail.index"
DLQ_TOPIC = "mail.dlq"


class SpoolMissing(Exception):
    """A record whose raw message is gone before it was delivered."""


def message_id_for(queue_id: str, user_id: str) -> str:
    """Deterministic, so a replayed envelope maps onto the same message."""
    return hashlib.sha256(f"{queue_id}\0{user_id}".encode()).hexdigest()[:20]


class DeliveryWorker:
    def __init__(self, config: Config, queue: Queue, metadata: MetadataStore,
                 blobs: BlobStore, cache: Cache, log: EventLog | None = None):
        self.config = config
        self.queue = queue
        self.metadata = metadata
        self.blobs = blobs
        self.log = log or EventLog("delivery")
        self.inbox = InboxCache(cache, metadata, config.delivery.inbox_cache_size,
                                config.delivery.inbox_cache_ttl, self.log)
        self.collector = Collector(metadata, blobs, config.gc, self.log)
        self.spam = SpamStage(config, metadata, blobs, cache) if config.spam.enabled else None

    async def run(self, stop: asyncio.Event, ready=None) -> None:
        async def drop_spools(spools: list[tuple[str, str] | None]) -> None:
            await self._drop_spools([s for s in spools if s])

        await consume(self.queue, INBOUND_TOPIC, GROUP,
                      batch_size=self.config.delivery.batch_size, process=self.handle_batch,
                      stop=stop, log=self.log, ready=ready, after_commit=drop_spools)

    async def handle_batch(self, records: list[Record]) -> list[tuple[str, str] | None]:
        """Delivers a batch with bounded concurrency, so the fsyncs of many
        messages share group commits, then refreshes each touched inbox head
        once. Raises StorageError if any record met a backend outage."""
        limit = asyncio.Semaphore(self.config.delivery.concurrency)
        touched: set[str] = set()

        async def one(record: Record) -> tuple[str, str] | None:
            async with limit:
                return await self.handle(record, touched)

        results = await asyncio.gather(*(one(r) for r in records), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for user_id in sorted(touched):
            await self.inbox.refresh(user_id)
        return results

    async def handle(self, record: Record, touched: set[str]) -> tuple[str, str] | None:
        """Delivers one record, retrying a failure a few times before it goes
        to the dead-letter topic. Returns (queue id, spool key) to drop after commit.
        Raises StorageError when a backend is down, so the batch is retried."""
        attempts = self.config.delivery.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                envelope = events_pb2.InboundEnvelope.FromString(record.value)
                await self.deliver(envelope, touched)
                return envelope.queue_id, envelope.spool_key
            except StorageError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self.log.warning("delivery_failed", offset=record.offset, attempt=attempt,
                                 error=reason)
                if attempt < attempts:
                    await asyncio.sleep(self.config.delivery.retry_backoff * attempt)
        await self.dead_letter(record, reason, attempts)
        return None

    async def deliver(self, envelope: events_pb2.InboundEnvelope, touched: set[str]) -> None:
        """Stores one envelope's message for each recipient, adding the users
        whose inbox head must be refreshed to `touched`."""
        try:
            raw = await self.blobs.get(envelope.spool_key)
        except NotFound:
            # The spool is dropped only after a commit, so a replayed record
            # finds its copies stored. One that does not lost its spool some
            # other way (a wiped or shared store): it goes to the dead-letter
            # topic for the postmaster, never skipped as if delivered.
            for rcpt in envelope.rcpt_to:
                user_id = rcpt.lower()
                if await self.metadata.get_message(
                        user_id, message_id_for(envelope.queue_id, user_id)) is None:
                    raise SpoolMissing(f"spool blob {envelope.spool_key} is gone and the message"
                                       f" was never stored for {rcpt}")
            self.log.info("replayed_after_delivery", queue_id=envelope.queue_id)
            return
        started = time.monotonic()  # before the puts: see store/gc/links.py
        store = lambda: store_content(self.blobs, raw, self.config.delivery.min_part_size,  # noqa: E731
                                      self._parent_finder(envelope))
        stored = await store()
        for delta_key, base_key in stored.deltas:
            # The base outlives the delta blob, whichever messages come to share it.
            await self.metadata.link_blobs(delta_owner(delta_key), [base_key])
        skeleton_key, summary = stored.skeleton_key, stored.summary
        attachments, blob_keys = stored.attachments, stored.blob_keys
        assessment = await self.spam.assess(envelope, raw, stored) if self.spam else None

        for rcpt in envelope.rcpt_to:
            user_id = rcpt.lower()
            message_id = message_id_for(envelope.queue_id, user_id)
            thread_id = await find_thread(self.metadata, user_id, summary,
                                          envelope.received_at_ms,
                                          self.config.delivery.thread_subject_window) or message_id
            # Each copy carries its own X-Spam headers (per-user classifier).
            copy = await assessment.file(user_id, message_id) if assessment else None
            record = MessageRecord(
                user_id=user_id, message_id=message_id, thread_id=thread_id,
                received_at_ms=envelope.received_at_ms,
                skeleton_key=copy.skeleton_key if copy else skeleton_key,
                size=copy.size if copy else len(raw), rfc822_message_id=summary.rfc822_message_id,
                references=summary.references, sender=summary.sender, to=summary.to,
                cc=summary.cc, subject=summary.subject, snippet=summary.snippet,
                # A DMARC quarantine at the MX, or the spam stage, files it under SPAM.
                labels={"SPAM" if envelope.quarantine or (copy and copy.verdict.spam)
                        else "INBOX", "UNREAD"},
                has_attachments=bool(attachments),
                attachments=attachments, malformed=summary.malformed,
                queue_id=envelope.queue_id)
            # Link before the message becomes visible, so a collector never
            # sees a listed message whose blobs look unreferenced.
            keys = copy.blob_keys(stored) if copy else blob_keys
            sizes = copy.blob_sizes(stored) if copy else stored.blob_sizes
            await link_and_secure(self.metadata, self.blobs, [f"{user_id}/{message_id}"], keys,
                                  started, copy.restorer(self.blobs, store) if copy else store,
                                  grace=self.config.gc.grace,
                                  claim_lease=self.config.gc.claim_lease)
            await self.metadata.charge_blobs(user_id, {k: sizes.get(k, 0) for k in keys})
            created = await self.metadata.put_message(record)
            touched.add(user_id)
            event = events_pb2.IndexEvent(kind=events_pb2.IndexEvent.MESSAGE_ADDED,
                                          user_id=user_id, message_id=message_id,
                                          at_ms=int(time.time() * 1000))
            await self.queue.publish(INDEX_TOPIC, user_id.encode(), event.SerializeToString())
            self.log.info("delivered", queue_id=envelope.queue_id, user=user_id,
                          message_id=message_id, replay=not created,
                          malformed=summary.malformed or None,
                          spam_score=copy.verdict.score if copy else None)
            await trace.record(self.metadata, self.log, [trace.step(
                envelope.queue_id, trace.DELIVERED, user_id, user=user_id, message_id=message_id,
                labels=",".join(sorted(record.labels)), replay="yes" if not created else "")],
                [message_id, summary.rfc822_message_id])
        metrics.delivery_seconds.observe(max(0.0, time.time() - envelope.received_at_ms / 1000))

    def _parent_finder(self, envelope: events_pb2.InboundEnvelope):
        """How store_content finds the blobs of the message a reply answers,
        to store it as a delta; None when deltas are off."""
        if not (self.config.at_rest.delta and supports_delta(self.blobs)):
            return None

        async def parent_of(summary) -> ParentBlobs | None:
            users = [rcpt.lower() for rcpt in envelope.rcpt_to]
            skeleton_key = await find_parent(self.metadata, users, summary.references)
            return await parent_blobs(self.blobs, skeleton_key) if skeleton_key else None
        return parent_of

    async def dead_letter(self, record: Record, reason: str, attempts: int) -> None:
        letter = events_pb2.DeadLetter(
            topic=record.topic, partition=record.partition, offset=record.offset,
            key=record.key, value=record.value, reason=reason, attempts=attempts,
            failed_at_ms=int(time.time() * 1000), group=GROUP)
        await self.queue.publish(DLQ_TOPIC, record.key, letter.SerializeToString())
        self.log.error("dead_lettered", offset=record.offset, reason=reason)
        try:
            queue_id = events_pb2.InboundEnvelope.FromString(record.value).queue_id
        except Exception:
            return  # undecodable: nothing to file it under
        await trace.record(self.metadata, self.log, [trace.step(
            queue_id, trace.DEAD_LETTERED, GROUP, reason=reason, attempts=attempts)])

    async def _drop_spools(self, spools: list[tuple[str, str]]) -> None:
        """The spool copy is redundant once the skeleton and parts are committed:
        its link goes, and the collector frees it at once unless something
        else links the same bytes (a message forwarded as an attachment)."""
        for queue_id, key in spools:
            try:
                await self.metadata.unlink_blobs(spool_owner(queue_id), [key])
                await self.collector.collect(key)
            except Exception as exc:
                self.log.warning("spool_drop_failed", key=key, error=repr(exc))


async def serve(config: Config, stores, stop: asyncio.Event, ready=None) -> None:
    worker = DeliveryWorker(config, await stores.queue(), await stores.metadata(),
                            await stores.blobs(), await stores.cache())
    await worker.run(stop, ready)
