"""The sender's SENT copy, stored synchronously so Sent is right when sending returns.

Used by the one submit path (mta/submit.py) for SMTP submission and the API
alike: the same blobs, thread and record as the delivery worker writes for
received mail, labelled SENT, with an id derived from the queue id so that a
retried step finds the same record.
"""
from __future__ import annotations

import hashlib
import time

from mailyard.policy.config import GcConfig
from mailyard.store.gc.links import link_and_secure

from mailyard.store.blobs.base import BlobStore
from mailyard.store.messages import find_thread, store_content
from mailyard.store.metadata.base import MessageRecord, MetadataStore


def sent_message_id(queue_id: str, user: str) -> str:
    return hashlib.sha256(f"{queue_id}\0sent\0{user}".encode()).hexdigest()[:20]


async def store_sent_copy(metadata: MetadataStore, blobs: BlobStore, user: str, raw: bytes,
                          queue_id: str, now_ms: int, min_part_size: int,
                          thread_subject_window: float) -> MessageRecord:
    started = time.monotonic()
    stored = await store_content(blobs, raw, min_part_size)
    message_id = sent_message_id(queue_id, user)
    summary = stored.summary
    thread_id = await find_thread(metadata, user, summary, now_ms,
                                  thread_subject_window) or message_id
    record = MessageRecord(
        user_id=user, message_id=message_id, thread_id=thread_id, received_at_ms=now_ms,
        skeleton_key=stored.skeleton_key, size=stored.size,
        rfc822_message_id=summary.rfc822_message_id, references=summary.references,
        sender=summary.sender, to=summary.to, cc=summary.cc, subject=summary.subject,
        snippet=summary.snippet, labels={"SENT"}, has_attachments=bool(stored.attachments),
        attachments=stored.attachments, queue_id=queue_id)
    gc = GcConfig()
    await link_and_secure(metadata, blobs, [f"{user}/{message_id}"], stored.blob_keys, started,
                          lambda: store_content(blobs, raw, min_part_size), grace=gc.grace,
                          claim_lease=gc.claim_lease)
    await metadata.charge_blobs(user, stored.blob_sizes)
    await metadata.put_message(record)
    return record
