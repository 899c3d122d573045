"""Queueing a message for remote delivery: the signed raw bytes into the
BlobStore spool, its OutboundEntry into the MetadataStore (what the queue
admin commands see), then its envelope on mail.outbound.

The one way out for every sender (SMTP submission, the API's SendMessage and
SendDraft, DSNs): the message counts as accepted only once all three are
durable; when a step fails, the earlier ones are undone and the error raised,
so the caller answers 451 / UNAVAILABLE and nothing half-queued lingers.
"""
from __future__ import annotations

import time

from mailyard.proto import events_pb2
from mailyard.policy.config import GcConfig
from mailyard.store.blobs.base import BlobStore
from mailyard.store.gc.links import link_and_secure
from mailyard.store.metadata.base import OUTBOUND_QUEUED, MetadataStore, OutboundEntry
from mailyard.store.queue.base import Queue

OUTBOUND_TOPIC = "mail.outbound"


async def queue_outbound(blobs: BlobStore, metadata: MetadataStore, queue: Queue, raw: bytes,
                         envelope: events_pb2.OutboundEnvelope,
                         gc: GcConfig | None = None) -> OutboundEntry:
    """Spools `raw`, fills the envelope's spool_key, size, generation (1) and
    submitted_at_ms when unset, records the entry and publishes the envelope
    keyed by its queue id. Returns the entry; raises what failed."""
    now_ms = int(time.time() * 1000)
    started = time.monotonic()
    spool_key = await blobs.put(raw)
    # Linked until delete_outbound drops the entry, so the collector keeps it.
    gc = gc or GcConfig()
    await link_and_secure(metadata, blobs, [f"outbound/{envelope.queue_id}"], [spool_key],
                          started, lambda: blobs.put(raw), grace=gc.grace,
                          claim_lease=gc.claim_lease)
    envelope.spool_key, envelope.size, envelope.generation = spool_key, len(raw), 1
    envelope.submitted_at_ms = envelope.submitted_at_ms or now_ms
    envelope.not_before_ms = envelope.not_before_ms or now_ms
    value = envelope.SerializeToString()
    entry = OutboundEntry(queue_id=envelope.queue_id, generation=1, state=OUTBOUND_QUEUED,
                          envelope=value, next_attempt_ms=envelope.not_before_ms,
                          updated_at_ms=now_ms)
    try:
        await metadata.put_outbound(entry)
    except BaseException:
        try:  # the blob itself is left to the garbage collector
            await metadata.unlink_blobs(f"outbound/{envelope.queue_id}", [spool_key])
        except Exception:
            pass
        raise
    try:
        await queue.publish(OUTBOUND_TOPIC, envelope.queue_id.encode(), value)
    except BaseException:
        try:
            await metadata.delete_outbound(envelope.queue_id)  # drops the link too
        except Exception:
            pass
        raise
    return entry
