"""Queueing a message for local delivery: the raw bytes into the BlobStore
spool, then its envelope on mail.inbound.

The one way in for every producer (the MX, and the API's SendDraft): a message
counts as accepted only once both are durable, and when the publish fails the
spool blob (unique to its queue id) is dropped so nothing lingers.
"""
from __future__ import annotations

from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.queue.base import Queue

INBOUND_TOPIC = "mail.inbound"


async def spool_and_queue(blobs: BlobStore, queue: Queue, raw: bytes,
                          envelope: events_pb2.InboundEnvelope) -> str:
    """Spools `raw`, fills the envelope's spool_key and size, and publishes it
    keyed by its queue id. Returns the spool key; raises what failed."""
    spool_key = await blobs.put(raw)
    try:
        envelope.spool_key, envelope.size = spool_key, len(raw)
        await queue.publish(INBOUND_TOPIC, envelope.queue_id.encode(),
                            envelope.SerializeToString())
    except BaseException:
        try:
            await blobs.delete(spool_key)
        except Exception:
            pass
        raise
    return spool_key
