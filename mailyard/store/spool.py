"""Queueing a message for local delivery: the raw bytes into the BlobStore
spool (linked to owner `spool/<queue id>` until delivered, so the garbage
collector keeps it), then its envelope on mail.inbound.

The one way in for every producer (the MX, and the API's SendDraft): a message
counts as accepted only once both are durable, and when the publish fails the
spool link is dropped and the blob collected, so nothing lingers.
"""
from __future__ import annotations

from mailyard.proto import events_pb2
import time

from mailyard.policy.config import GcConfig
from mailyard.store.blobs.base import BlobStore
from mailyard.store.gc.collector import Collector
from mailyard.store.gc.links import link_and_secure
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.queue.base import Queue

INBOUND_TOPIC = "mail.inbound"


def spool_owner(queue_id: str) -> str:
    return f"spool/{queue_id}"


async def spool_and_queue(blobs: BlobStore, metadata: MetadataStore, queue: Queue, raw: bytes,
                          envelope: events_pb2.InboundEnvelope, *, gc: GcConfig) -> str:
    """Spools `raw`, fills the envelope's spool_key and size, and publishes it
    keyed by its queue id. Returns the spool key; raises what failed."""
    started = time.monotonic()
    spool_key = await blobs.put(raw)
    owner = spool_owner(envelope.queue_id)
    await link_and_secure(metadata, blobs, [owner], [spool_key], started,
                          lambda: blobs.put(raw), grace=gc.grace, claim_lease=gc.claim_lease)
    try:
        envelope.spool_key, envelope.size = spool_key, len(raw)
        await queue.publish(INBOUND_TOPIC, envelope.queue_id.encode(),
                            envelope.SerializeToString())
    except BaseException:
        try:
            await metadata.unlink_blobs(owner, [spool_key])
            await Collector(metadata, blobs, gc).collect(spool_key)
        except Exception:
            pass
        raise
    return spool_key
