"""MetadataStore contract for garbage collection and quotas: blob unlinks,
deletion claims and tombstones, per-user storage usage. Every adapter."""
from __future__ import annotations

import asyncio
import uuid

from mailyard.store.metadata.base import (DELETION_DONE, DELETION_PENDING, MessageRecord,
                                          MetadataStore, OutboundEntry, OUTBOUND_QUEUED)

from .conftest_ports import MetadataFactory


def new_key() -> str:
    return "sha256/" + uuid.uuid4().hex * 2


def new_user() -> str:
    return f"u{uuid.uuid4().hex[:16]}@example.test"


def record(user_id: str, message_id: str, skeleton_key: str) -> MessageRecord:
    return MessageRecord(user_id=user_id, message_id=message_id, thread_id=message_id,
                         received_at_ms=1_700_000_000_000, skeleton_key=skeleton_key, size=10,
                         labels={"INBOX"})


async def test_unlink_drops_only_that_owners_links(metadata: MetadataStore):
    k1, k2 = new_key(), new_key()
    await metadata.link_blobs("spool/a", [k1, k2])
    await metadata.link_blobs("spool/b", [k1])
    await metadata.unlink_blobs("spool/a", [k1, new_key()])
    assert await metadata.blob_owners(k1) == ["spool/b"]
    assert await metadata.blob_owners(k2) == ["spool/a"]


async def test_delete_outbound_drops_its_spool_link(metadata: MetadataStore):
    queue_id, key = uuid.uuid4().hex, new_key()
    await metadata.link_blobs(f"outbound/{queue_id}", [key])
    await metadata.put_outbound(OutboundEntry(queue_id, 1, OUTBOUND_QUEUED, b"x"))
    assert await metadata.blob_owners(key) == [f"outbound/{queue_id}"]
    assert await metadata.delete_outbound(queue_id, 1)
    assert await metadata.blob_owners(key) == []


async def test_one_claim_wins_among_concurrent_collectors(metadata_factory: MetadataFactory):
    stores = [await metadata_factory() for _ in range(3)]
    key = new_key()
    won = await asyncio.gather(*(s.claim_blob_deletion(key, 1000 + i)
                                 for i, s in enumerate(stores) for _ in range(2)))
    assert sum(won) == 1
    (claim,) = (await stores[0].blob_deletions([key, new_key()])).values()
    assert (claim.key, claim.state) == (key, DELETION_PENDING)


async def test_claim_ends_as_tombstone_or_goes(metadata: MetadataStore):
    kept, deleted = new_key(), new_key()
    assert await metadata.claim_blob_deletion(kept, 10)
    assert await metadata.claim_blob_deletion(deleted, 10)
    await metadata.end_blob_deletion(kept, False, 20)
    await metadata.end_blob_deletion(deleted, True, 30)
    records = await metadata.blob_deletions([kept, deleted])
    assert list(records) == [deleted]
    assert (records[deleted].state, records[deleted].at_ms) == (DELETION_DONE, 30)
    # A tombstone blocks a new claim until it is forgotten.
    assert not await metadata.claim_blob_deletion(deleted, 40)
    await metadata.forget_blob_deletion(kept)      # nothing there: no error
    await metadata.forget_blob_deletion(deleted)
    assert await metadata.blob_deletions([deleted]) == {}
    assert await metadata.claim_blob_deletion(deleted, 50)


async def test_forget_leaves_a_pending_claim(metadata: MetadataStore):
    key = new_key()
    assert await metadata.claim_blob_deletion(key, 10)
    await metadata.forget_blob_deletion(key)
    assert (await metadata.blob_deletions([key]))[key].state == DELETION_PENDING
    await metadata.end_blob_deletion(key, False, 20)


async def test_deletions_list_in_key_order_with_paging(metadata: MetadataStore):
    keys = sorted(new_key() for _ in range(5))
    for key in keys:
        assert await metadata.claim_blob_deletion(key, 1)
    seen, after = [], keys[0][:-1]   # just before our first key
    while True:
        page = [d.key for d in await metadata.list_blob_deletions(2, after)]
        if not page or page[0] > keys[-1]:
            break
        seen += [k for k in page if k in keys]
        after = page[-1]
    assert seen == keys
    for key in keys:
        await metadata.end_blob_deletion(key, False, 2)


async def test_usage_counts_a_shared_blob_once_per_user(metadata: MetadataStore):
    alice, bob = new_user(), new_user()
    skeleton1, skeleton2, attachment = new_key(), new_key(), new_key()
    for user, message_id, skeleton in ((alice, "m1", skeleton1), (alice, "m2", skeleton2),
                                       (bob, "m1", skeleton1)):
        keys = {skeleton: 100, attachment: 5000}
        await metadata.link_blobs(f"{user}/{message_id}", list(keys))
        await metadata.charge_blobs(user, keys)
        await metadata.charge_blobs(user, keys)       # a replay charges nothing more
        await metadata.put_message(record(user, message_id, skeleton))
    assert await metadata.storage_usage(alice) == 5200
    assert await metadata.storage_usage(bob.upper()) == 5100
    await metadata.delete_messages(alice, ["m1"])
    assert await metadata.storage_usage(alice) == 5100    # m2 still has the attachment
    await metadata.delete_messages(alice, ["m2"])
    assert await metadata.storage_usage(alice) == 0
    assert await metadata.storage_usage(bob) == 5100
    assert await metadata.storage_usage(new_user()) == 0
