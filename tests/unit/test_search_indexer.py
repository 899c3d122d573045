"""The indexer on the real embedded adapters: delivery publishes on mail.index,
the indexer writes batches, commits after, replays harmlessly; the searcher
uses the Bloom filter; the API fails fast when the index is down."""
from __future__ import annotations

import asyncio
import hashlib
from email.message import EmailMessage

import grpc
import pytest

from mailyard.policy.config import Config
from mailyard.proto import events_pb2, mailbox_pb2, mailbox_pb2_grpc
from mailyard.searchd.bloom import BloomFilters
from mailyard.searchd.indexer import GROUP, INDEX_TOPIC, Indexer
from mailyard.searchd.index.fts5 import Fts5SearchIndex
from mailyard.searchd.query import parse
from mailyard.searchd.searcher import IndexSearcher
from mailyard.store.mailbox.auth import issue_token
from mailyard.store.mailbox.service import MailboxService
from mailyard.store.metadata.base import MessageRecord
from mailyard.store.mime import split, summarize
from mailyard.store.stores import Stores

ALICE = "alice@example.test"


def raw(subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@remote.example", ALICE, subject
    msg.set_content(body)
    return msg.as_bytes()


@pytest.fixture
async def system(tmp_path):
    config = Config(data_dir=str(tmp_path))
    stores = Stores(config)
    index = await stores.extra("search", lambda: Fts5SearchIndex(tmp_path / "search.db"))
    blooms = BloomFilters(await stores.cache())
    queue, metadata, blobs = await stores.queue(), await stores.metadata(), await stores.blobs()
    indexer = Indexer(config, queue, metadata, blobs, index, blooms)

    async def deliver(*messages: bytes) -> None:
        """What the delivery worker does: skeleton and parts, metadata, index event."""
        for data in messages:
            skeleton, parts, _ = split(data)
            for part in parts.values():
                await blobs.put(part)
            summary = summarize(data)
            message_id = hashlib.sha256(data).hexdigest()[:20]
            await metadata.put_message(MessageRecord(
                user_id=ALICE, message_id=message_id, thread_id=message_id,
                received_at_ms=1_700_000_000_000 + len(data), size=len(data),
                skeleton_key=await blobs.put(skeleton.SerializeToString()),
                sender=summary.sender, subject=summary.subject, labels={"INBOX", "UNREAD"}))
            event = events_pb2.IndexEvent(kind=events_pb2.IndexEvent.MESSAGE_ADDED,
                                          user_id=ALICE, message_id=message_id)
            await queue.publish(INDEX_TOPIC, ALICE.encode(), event.SerializeToString())

    yield config, stores, index, blooms, indexer, deliver
    await stores.close()


async def ids(index, query: str) -> list[str]:
    return [h.message_id for h in (await index.search(ALICE, parse(query), 50)).hits]


async def test_batches_are_indexed_then_committed_and_replays_change_nothing(system):
    config, stores, index, blooms, indexer, deliver = system
    queue = await stores.queue()
    await deliver(raw("budget review", "numbers"), raw("lisbon trip", "flights"))
    consumer = await queue.consumer(INDEX_TOPIC, GROUP)
    records = await consumer.fetch(100, timeout=1)
    assert len(records) == 2
    await indexer.index_batch(records)
    assert await queue.lag(INDEX_TOPIC, GROUP) == 2  # the caller commits, after the write
    await indexer.index_batch(records)               # a replay
    await consumer.commit(records)
    assert await queue.lag(INDEX_TOPIC, GROUP) == 0
    assert await index.count(ALICE) == 2
    assert len(await ids(index, "budget OR lisbon")) == 2
    bloom = await blooms.load(ALICE)
    assert "budget" in bloom and "flights" in bloom and "zanzibar" not in bloom


async def test_label_changes_reach_the_index(system):
    config, stores, index, blooms, indexer, deliver = system
    queue, metadata = await stores.queue(), await stores.metadata()
    await deliver(raw("budget review", "numbers"))
    consumer = await queue.consumer(INDEX_TOPIC, GROUP)
    await indexer.index_batch(await consumer.fetch(100, timeout=1))
    (message_id,) = await ids(index, "budget")
    await metadata.modify_labels(ALICE, [message_id], {"STARRED"}, {"UNREAD"})
    event = events_pb2.IndexEvent(kind=events_pb2.IndexEvent.LABELS_CHANGED, user_id=ALICE,
                                  message_id=message_id)
    await queue.publish(INDEX_TOPIC, ALICE.encode(), event.SerializeToString())
    await indexer.index_batch(await consumer.fetch(100, timeout=1))
    assert await ids(index, "is:read is:starred") == [message_id]
    assert await ids(index, "is:unread") == []


async def test_the_running_indexer_makes_mail_searchable(system):
    config, stores, index, blooms, indexer, deliver = system
    stop = asyncio.Event()
    task = asyncio.create_task(indexer.run(stop))
    await deliver(raw("quokka census", "results"))
    for _ in range(100):
        if await ids(index, "quokka"):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert len(await ids(index, "quokka")) == 1
    assert await (await stores.queue()).lag(INDEX_TOPIC, GROUP) == 0


async def test_the_bloom_filter_answers_for_terms_never_received(system):
    config, stores, index, blooms, indexer, deliver = system
    await deliver(raw("budget review", "numbers"))
    consumer = await (await stores.queue()).consumer(INDEX_TOPIC, GROUP)
    await indexer.index_batch(await consumer.fetch(100, timeout=1))
    searcher = IndexSearcher(index, blooms)
    assert (await searcher.search(ALICE, "zanzibar", 10)).message_ids == []
    assert len((await searcher.search(ALICE, "budget", 10)).message_ids) == 1
    assert len((await searcher.search(ALICE, "-zanzibar", 10)).message_ids) == 1
    assert searcher.stats.answered_by_bloom == 1 and searcher.stats.searches == 3
    # A lost filter is rebuilt from the index, never started empty.
    await blooms.drop(ALICE)
    await deliver(raw("lisbon trip", "flights"))
    await indexer.index_batch(await consumer.fetch(100, timeout=1))
    bloom = await blooms.load(ALICE)
    assert "budget" in bloom and "lisbon" in bloom


async def test_search_fails_fast_with_unavailable_when_the_index_is_down(system):
    config, stores, index, blooms, indexer, deliver = system
    searcher = IndexSearcher(index, None)
    service = MailboxService(config, await stores.metadata(), await stores.blobs(),
                             await stores.cache(), await stores.queue(), searcher=searcher)
    server = grpc.aio.server()
    mailbox_pb2_grpc.add_MailboxServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = mailbox_pb2_grpc.MailboxStub(channel)
    auth = [("authorization", f"Bearer {issue_token(config, ALICE, 60)}")]
    try:
        await stub.Search(mailbox_pb2.SearchRequest(query="budget"), metadata=auth)
        await index.close()  # the backend goes away
        codes = []
        for _ in range(config.search.breaker_failures + 2):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Search(mailbox_pb2.SearchRequest(query="budget"), metadata=auth)
            codes.append((error.value.code(), "circuit open" in error.value.details()))
        assert {c for c, _ in codes} == {grpc.StatusCode.UNAVAILABLE}
        assert [o for _, o in codes][-2:] == [True, True]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Search(mailbox_pb2.SearchRequest(query="(budget"), metadata=auth)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        await server.stop(None)
