"""The blob garbage collector on every BlobStore x MetadataStore pair: what it
frees and keeps, and the race it must win (store/gc/__init__.py): deliveries
of the same attachment while its last message is deleted and collectors run."""
from __future__ import annotations

import asyncio
import base64
import time
import uuid

from mailyard.policy.config import GcConfig
from mailyard.store.blobs.base import BlobStore, blob_key
from mailyard.store.gc.collector import Collector
from mailyard.store.gc.links import link_and_secure
from mailyard.store.messages import store_content
from mailyard.store.metadata.base import DELETION_DONE, MessageRecord, MetadataStore

ATTACHMENT = bytes(range(256)) * 64          # 16 KiB: a part blob of its own
ROUNDS = 25


def raw_with_attachment(note: str) -> bytes:
    body = base64.encodebytes(ATTACHMENT).decode().replace("\n", "\r\n")
    return (f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {note}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            f"--XX\r\nContent-Type: text/plain\r\n\r\n{note}\r\n"
            "--XX\r\nContent-Type: application/octet-stream\r\n"
            "Content-Disposition: attachment; filename=a.bin\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}--XX--\r\n").encode()


async def deliver(metadata: MetadataStore, blobs: BlobStore, user: str, raw: bytes,
                  gc: GcConfig) -> list[str]:
    """What the delivery worker does for one recipient: put, link and
    secure, charge, then make the message visible."""
    started = time.monotonic()
    stored = await store_content(blobs, raw, 1024)
    message_id = uuid.uuid4().hex
    await link_and_secure(metadata, blobs, [f"{user}/{message_id}"], stored.blob_keys, started,
                          lambda: store_content(blobs, raw, 1024), grace=gc.grace,
                          claim_lease=gc.claim_lease)
    await metadata.charge_blobs(user, stored.blob_sizes)
    await metadata.put_message(MessageRecord(
        user_id=user, message_id=message_id, thread_id=message_id, received_at_ms=1,
        skeleton_key=stored.skeleton_key, size=len(raw), labels={"INBOX"}))
    return [message_id, *stored.blob_keys]


async def test_collector_racing_deliveries_never_loses_a_linked_blob(
        metadata: MetadataStore, blobstore: BlobStore):
    gc = GcConfig(grace=600, claim_lease=60)
    collector = Collector(metadata, blobstore, gc)
    users = [f"u{uuid.uuid4().hex[:12]}@example.test" for _ in range(2)]
    live: dict[str, list[str]] = {}            # user -> [message_id, *keys] of the latest
    freed = 0
    for n in range(ROUNDS):
        raws = {user: raw_with_attachment(f"round {n} for {user}") for user in users}
        old = dict(live)
        writing = asyncio.gather(*(deliver(metadata, blobstore, user, raws[user], gc)
                                   for user in users))

        async def delete_old() -> None:
            for user, (message_id, *_) in old.items():
                await metadata.delete_messages(user, [message_id])

        async def collect() -> int:
            count = 0
            suspects = {k for _, *keys in old.values() for k in keys} | {blob_key(ATTACHMENT)}
            while not writing.done():
                for key in suspects:
                    count += await collector.collect(key) is not None
                await asyncio.sleep(0)
            return count

        results, _, count = await asyncio.gather(writing, delete_old(), collect())
        freed += count
        live = dict(zip(users, results))
        for user, (message_id, *keys) in live.items():
            for key in keys:
                assert await blobstore.exists(key), f"round {n}: {key} of {user} was lost"
            record = await metadata.get_message(user, message_id)
            assert await blobstore.get(record.skeleton_key)
    assert freed > 0, "the collector never got to free anything: the race was not run"


async def test_a_run_frees_unlinked_blobs_only(metadata: MetadataStore, blobstore: BlobStore):
    gc = GcConfig(batch_size=3, batch_pause=0, grace=0.001)
    linked, unlinked = [await blobstore.put(uuid.uuid4().bytes * n) for n in (1, 2)]
    await metadata.link_blobs(f"spool/{uuid.uuid4().hex}", [linked])
    collector = Collector(metadata, blobstore, gc)

    dry = await collector.run(dry_run=True)
    assert unlinked in dry.freed_keys and linked not in dry.freed_keys
    assert await blobstore.exists(unlinked)

    report = await collector.run()
    assert unlinked in report.freed_keys and report.freed_bytes >= 32
    assert not await blobstore.exists(unlinked) and await blobstore.exists(linked)
    # The tombstone outlived grace: the run after forgets it.
    await asyncio.sleep(0.01)
    await collector.tend_records()
    assert await metadata.blob_deletions([unlinked]) == {}


async def test_a_writer_restores_a_blob_deleted_between_its_put_and_its_link(
        metadata: MetadataStore, blobstore: BlobStore):
    gc = GcConfig()
    data = uuid.uuid4().bytes * 10
    started = time.monotonic()
    key = await blobstore.put(data)                           # W1: found or written
    assert await Collector(metadata, blobstore, gc).collect(key) == len(data)   # C1-C4
    assert (await metadata.blob_deletions([key]))[key].state == DELETION_DONE
    await link_and_secure(metadata, blobstore, ["spool/q1"], [key], started,
                          lambda: blobstore.put(data), grace=gc.grace,
                          claim_lease=gc.claim_lease)         # W2-W4
    assert await blobstore.get(key) == data


async def test_a_dead_collectors_claim_is_taken_over(metadata: MetadataStore,
                                                     blobstore: BlobStore):
    gc = GcConfig(claim_lease=0.001)
    data = uuid.uuid4().bytes * 3
    key = await blobstore.put(data)
    assert await metadata.claim_blob_deletion(key, int(time.time() * 1000) - 10)  # then died
    await metadata.link_blobs("spool/q2", [key])
    await link_and_secure(metadata, blobstore, [], [key], time.monotonic(),
                          lambda: blobstore.put(data), grace=gc.grace,
                          claim_lease=gc.claim_lease)
    assert (await metadata.blob_deletions([key]))[key].state == DELETION_DONE
    assert await blobstore.get(key) == data
