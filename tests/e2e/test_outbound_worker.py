"""The outbound service in process, on the real embedded adapters, started on
states a crash leaves behind."""
from __future__ import annotations

import asyncio
import time

from mailyard.delivery.worker import DeliveryWorker
from mailyard.mta.dns import open_resolver
from mailyard.mta.ids import new_queue_id
from mailyard.mta.outbound import outcome
from mailyard.mta.outbound.schedule import tier_topic
from mailyard.mta.outbound.service import serve
from mailyard.mta.outbound.worker import OutboundWorker
from mailyard.policy.config import Config
from mailyard.proto import events_pb2
from mailyard.store.metadata.base import OUTBOUND_DEFERRED, OutboundEntry
from mailyard.store.outbox import OUTBOUND_TOPIC, queue_outbound
from mailyard.store.spool import INBOUND_TOPIC
from mailyard.store.stores import Stores
from tests.e2e.receivers import Receiver, free_port

RAW = b"From: alice@example.test\r\nTo: x@remote.test\r\nSubject: s\r\n\r\nbody\r\n"
ZONE = """
remote.test.     IN MX 10 mx.remote.test.
mx.remote.test.  IN A  127.0.0.2
"""


def config_for(tmp_path, port: int) -> Config:
    zone = tmp_path / "zone.db"
    zone.write_text(ZONE)
    config = Config(data_dir=str(tmp_path / "data"))
    config.dns.zone_file = str(zone)
    config.queue.poll_interval = 0.05
    config.outbound.remote_port = port
    config.outbound.retry_schedule = ["1s"]
    config.outbound.connection_idle = 0.2
    return config


async def queued(stores: Stores) -> events_pb2.OutboundEnvelope:
    envelope = events_pb2.OutboundEnvelope(queue_id=new_queue_id(), mail_from="a@example.test",
                                           rcpt_to=["x@remote.test"], user_id="a@example.test")
    await queue_outbound(await stores.blobs(), await stores.metadata(), await stores.queue(),
                         RAW, envelope)
    return envelope


async def run_until(config: Config, stores: Stores, done, timeout: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stores, stop))
    try:
        async with asyncio.timeout(timeout):
            while not await done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def test_a_crash_between_the_reschedule_and_its_tier_record_loses_nothing(tmp_path):
    port = free_port()
    config = config_for(tmp_path, port)
    stores = Stores(config)
    metadata = await stores.metadata()
    envelope = await queued(stores)
    # What a worker leaves when it dies right after its compare-and-set: the
    # entry one generation on, deferred, no tier record, the original uncommitted.
    following = events_pb2.OutboundEnvelope()
    following.CopyFrom(envelope)
    following.generation, following.attempt = 2, 1
    following.not_before_ms = int(time.time() * 1000) + 500
    assert await metadata.put_outbound(OutboundEntry(
        envelope.queue_id, 2, OUTBOUND_DEFERRED, following.SerializeToString(),
        following.not_before_ms, "451 4.7.1 try later"), expected_generation=1)

    with Receiver("127.0.0.2", port) as remote:
        async def delivered():
            return remote.messages and await metadata.get_outbound(envelope.queue_id) is None
        await run_until(config, stores, delivered)
    assert [m.data for m in remote.messages] == [RAW]
    await stores.close()


async def test_a_record_put_back_twice_is_attempted_once(tmp_path):
    """A tier consumer that dies after republishing, before its commit,
    republishes again: the copy must not make a second attempt or a second
    tier record."""
    port = free_port()
    config = config_for(tmp_path, port)
    stores = Stores(config)
    metadata, queue = await stores.metadata(), await stores.queue()
    envelope = await queued(stores)
    await queue.publish(OUTBOUND_TOPIC, envelope.queue_id.encode(),
                        (await metadata.get_outbound(envelope.queue_id)).envelope)
    answers = lambda rcpt, tries: "451 4.7.1 try later" if tries == 1 else None
    with Receiver("127.0.0.2", port, rcpt=answers) as remote:
        async def delivered():
            return remote.messages and await metadata.get_outbound(envelope.queue_id) is None
        await run_until(config, stores, delivered)
        await asyncio.sleep(1.5)
    assert remote.rcpt_tries["x@remote.test"] == 2 and len(remote.messages) == 1
    # A group that never joined counts every record kept: the one deferral.
    assert await queue.lag(tier_topic(1.0), "probe") == 1
    await stores.close()


async def test_a_bounce_written_twice_is_stored_once(tmp_path):
    """A worker killed after queueing a DSN, before removing the entry, makes
    the attempt again and queues the DSN again: the sender still gets one."""
    config = config_for(tmp_path, free_port())
    stores = Stores(config)
    metadata, queue, blobs = await stores.metadata(), await stores.queue(), await stores.blobs()
    envelope = await queued(stores)
    worker = OutboundWorker(config, queue, metadata, blobs, open_resolver(config.dns))
    refused = {"x@remote.test": outcome.from_reply(550, "5.1.1 no such user", "mx.remote.test")}
    await worker.settle(envelope, RAW, refused)
    assert await metadata.get_outbound(envelope.queue_id) is None
    await worker.settle(envelope, RAW, refused)  # the replay

    delivery = DeliveryWorker(config, queue, metadata, blobs, await stores.cache())
    consumer = await queue.consumer(INBOUND_TOPIC, "test")
    records = await consumer.fetch(10, timeout=2)
    assert len(records) == 2
    await delivery.handle_batch(records)
    (report,) = await metadata.list_messages("a@example.test", "INBOX", 10)
    assert report.subject == "Undelivered Mail Returned to Sender"
    assert report.queue_id == f"{envelope.queue_id}.failed.1"
    await consumer.close()
    await stores.close()
