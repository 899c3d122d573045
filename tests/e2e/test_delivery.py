"""The delivery worker in process, on the real embedded adapters: dead letters and replays."""
from __future__ import annotations

import asyncio

from mailyard.delivery.worker import DLQ_TOPIC, GROUP, DeliveryWorker, message_id_for
from mailyard.mta.inbound import INBOUND_TOPIC
from mailyard.policy.config import Config
from mailyard.proto import events_pb2
from mailyard.store.metadata.base import User
from mailyard.store.stores import Stores

ALICE = "alice@example.test"
RAW = b"Received: from x ([127.0.0.1])\r\nSubject: fine\r\n\r\nbody\r\n"


async def envelope(stores: Stores, queue_id: str) -> bytes:
    key = await (await stores.blobs()).put(RAW + queue_id.encode())
    return events_pb2.InboundEnvelope(queue_id=queue_id, rcpt_to=[ALICE], spool_key=key,
                                      received_at_ms=1_700_000_000_000).SerializeToString()


async def run_until(worker: DeliveryWorker, predicate, timeout: float = 20) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_rest_is_delivered(tmp_path):
    config = Config(data_dir=str(tmp_path))
    config.delivery.max_attempts, config.delivery.retry_backoff = 3, 0.01
    stores = Stores(config)
    metadata, queue = await stores.metadata(), await stores.queue()
    await metadata.add_domain("example.test")
    await metadata.put_user(User(ALICE))
    poison = await queue.publish(INBOUND_TOPIC, b"Q1", b"\xff\xff\xff not a protobuf")
    await queue.publish(INBOUND_TOPIC, b"Q2", await envelope(stores, "Q2"))
    worker = DeliveryWorker(config, queue, metadata, await stores.blobs(), await stores.cache())

    async def delivered():
        return await metadata.get_message(ALICE, message_id_for("Q2", ALICE)) is not None
    await run_until(worker, delivered)

    assert await queue.lag(INBOUND_TOPIC, GROUP) == 0
    dlq = await queue.consumer(DLQ_TOPIC, "inspect")
    (record,) = await dlq.fetch(10, timeout=2)
    letter = events_pb2.DeadLetter.FromString(record.value)
    assert (letter.topic, letter.partition, letter.offset) == (INBOUND_TOPIC, poison.partition,
                                                               poison.offset)
    assert letter.value == poison.value and letter.attempts == 3 and letter.group == GROUP
    assert "DecodeError" in letter.reason
    await dlq.close()
    await stores.close()


async def test_replaying_a_delivered_batch_stores_nothing_twice(tmp_path):
    config = Config(data_dir=str(tmp_path))
    stores = Stores(config)
    metadata, queue = await stores.metadata(), await stores.queue()
    await metadata.add_domain("example.test")
    await metadata.put_user(User(ALICE))
    records = [await queue.publish(INBOUND_TOPIC, f"R{i}".encode(), await envelope(stores, f"R{i}"))
               for i in range(5)]
    worker = DeliveryWorker(config, queue, metadata, await stores.blobs(), await stores.cache())
    await worker.handle_batch(records)
    await metadata.modify_labels(ALICE, [message_id_for("R0", ALICE)], set(), {"UNREAD"})
    await worker.handle_batch(records)  # as after a crash before the offset commit
    listed = await metadata.list_messages(ALICE, "INBOX", 50)
    assert sorted(m.queue_id for m in listed) == [f"R{i}" for i in range(5)]
    assert await metadata.count_messages(ALICE, "INBOX", unread_only=True) == 4
    await stores.close()


async def test_a_record_whose_spool_is_gone_before_delivery_is_dead_lettered(tmp_path):
    """A missing spool means "delivered already" only when the copies exist;
    otherwise the message was lost upstream, and the postmaster must see it."""
    config = Config(data_dir=str(tmp_path))
    config.delivery.max_attempts, config.delivery.retry_backoff = 2, 0.01
    stores = Stores(config)
    metadata, queue, blobs = await stores.metadata(), await stores.queue(), await stores.blobs()
    await metadata.add_domain("example.test")
    await metadata.put_user(User(ALICE))
    delivered = await queue.publish(INBOUND_TOPIC, b"D1", await envelope(stores, "D1"))
    worker = DeliveryWorker(config, queue, metadata, blobs, await stores.cache())
    await worker.handle_batch([delivered])
    lost_value = await envelope(stores, "L1")
    await blobs.delete(events_pb2.InboundEnvelope.FromString(lost_value).spool_key)
    await blobs.delete(events_pb2.InboundEnvelope.FromString(delivered.value).spool_key)
    lost = await queue.publish(INBOUND_TOPIC, b"L1", lost_value)

    assert await worker.handle_batch([delivered, lost]) == [("D1", delivered_key(delivered)),
                                                          None]
    dlq = await queue.consumer(DLQ_TOPIC, "inspect")
    (record,) = await dlq.fetch(10, timeout=2)
    letter = events_pb2.DeadLetter.FromString(record.value)
    assert letter.value == lost_value and "SpoolMissing" in letter.reason
    await dlq.close()
    await stores.close()


def delivered_key(record) -> str:
    return events_pb2.InboundEnvelope.FromString(record.value).spool_key
