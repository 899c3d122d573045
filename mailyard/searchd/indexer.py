"""The indexer: from the mail.index log into the SearchIndex, in batches.

A batch of index events becomes one bulk write: new messages are read from the
MetadataStore, rebuilt from the BlobStore and extracted; label changes carry
the message's labels as they are now (so events out of order cannot leave a
stale state); deletions remove. The users' Bloom filters learn the new terms
first, then the index write is made durable, and only then are the offsets
committed. Every step is idempotent, so a crash anywhere replays the batch.
"""
from __future__ import annotations

import asyncio
import time

from mailyard.policy import metrics
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.proto import events_pb2
from mailyard.searchd.bloom import BloomFilters, TermBloom
from mailyard.searchd.extract import Limits, document
from mailyard.searchd.index import shared_index
from mailyard.searchd.index.base import LabelChange, SearchDocument, SearchIndex
from mailyard.store import trace
from mailyard.store.blobs.base import BlobStore
from mailyard.store.errors import NotFound
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.queue.base import Queue, Record
from mailyard.store.queue.consume import consume
from mailyard.store.raw import load_raw

GROUP = "indexer"
INDEX_TOPIC = "mail.index"
Kind = events_pb2.IndexEvent


class Indexer:
    def __init__(self, config: Config, queue: Queue, metadata: MetadataStore, blobs: BlobStore,
                 index: SearchIndex, blooms: BloomFilters | None, log: EventLog | None = None):
        self.config, self.queue, self.metadata, self.blobs = config, queue, metadata, blobs
        self.index, self.blooms = index, blooms
        self.log = log or EventLog("indexer")
        self.limits = Limits(config.search.max_attachment_bytes, config.search.max_text_chars)

    async def run(self, stop: asyncio.Event, ready=None) -> None:
        await consume(self.queue, INDEX_TOPIC, GROUP, batch_size=self.config.search.batch_size,
                      process=self.index_batch, stop=stop, log=self.log, ready=ready)

    async def index_batch(self, records: list[Record]) -> None:
        latest: dict[tuple[str, str], int] = {}
        announced: list[int] = []  # the events' times, for the latency histogram
        for record in records:
            try:
                event = events_pb2.IndexEvent.FromString(record.value)
            except Exception as exc:  # not ours to fix: skip it, loudly
                self.log.error("bad_index_event", offset=record.offset, error=repr(exc))
                continue
            key = (event.user_id.lower(), event.message_id)
            if event.kind == Kind.LABELS_CHANGED and latest.get(key) == Kind.MESSAGE_ADDED:
                continue  # the add reads the labels as they are now anyway
            latest[key] = event.kind
            announced.append(event.at_ms)
        documents, labels, deletions, added = [], [], [], []
        for (user_id, message_id), kind in latest.items():
            if kind == Kind.MESSAGE_DELETED:
                deletions.append((user_id, message_id))
                continue
            record = await self.metadata.get_message(user_id, message_id)
            if record is None:  # gone since: nothing to find
                deletions.append((user_id, message_id))
            elif kind == Kind.LABELS_CHANGED:
                labels.append(LabelChange(user_id, message_id, set(record.labels)))
            elif kind == Kind.MESSAGE_ADDED:
                try:
                    raw = await load_raw(self.blobs, record.skeleton_key)
                except NotFound:
                    self.log.error("message_blobs_missing", user=user_id, message_id=message_id)
                    continue
                documents.append(await asyncio.to_thread(document, record, raw, self.limits,
                                                         self.log))
                if record.queue_id:
                    added.append(trace.step(record.queue_id, trace.INDEXED, user_id,
                                            user=user_id, message_id=message_id))
        await self.learn_terms(documents)
        await self.index.write(documents, labels, deletions)
        await trace.record(self.metadata, self.log, added)
        now = time.time()
        for at_ms in announced:
            if at_ms:
                metrics.index_seconds.observe(max(0.0, now - at_ms / 1000))
        self.log.info("indexed", added=len(documents), labels_changed=len(labels),
                      deleted=len(deletions), offset=records[-1].offset)

    async def learn_terms(self, documents: list[SearchDocument]) -> None:
        """Adds the documents' terms to their users' filters before the index has them."""
        if self.blooms is None:
            return
        by_user: dict[str, set[str]] = {}
        for doc in documents:
            found = by_user.setdefault(doc.user_id.lower(), set())
            for text in doc.text.values():
                found.update(text.split())
        for user_id, found in by_user.items():
            bloom = await self.blooms.load(user_id, writable=True)
            if bloom is None:  # never built, or the cache lost it: start from the index
                bloom = TermBloom()
                bloom.update([term async for term in self.index.terms(user_id)])
            bloom.update(found)
            if not await self.blooms.save(user_id, bloom):
                await self.blooms.drop(user_id)  # no filter is slower, a stale one is wrong


async def serve(config: Config, stores, stop: asyncio.Event, ready=None) -> None:
    blooms = BloomFilters(await stores.cache()) if config.search.bloom_filter else None
    indexer = Indexer(config, await stores.queue(), await stores.metadata(), await stores.blobs(),
                      await shared_index(config, stores), blooms)
    await indexer.run(stop, ready)
