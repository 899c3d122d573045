"""Telling the search indexer what the API changed (topic mail.index, keyed by user)."""
from __future__ import annotations

import time

from mailyard.proto import events_pb2
from mailyard.store.queue.base import Queue

INDEX_TOPIC = "mail.index"
ADDED = events_pb2.IndexEvent.MESSAGE_ADDED
LABELS_CHANGED = events_pb2.IndexEvent.LABELS_CHANGED
DELETED = events_pb2.IndexEvent.MESSAGE_DELETED


async def announce(queue: Queue, kind: int, user_id: str, message_ids: list[str]) -> None:
    now = int(time.time() * 1000)
    for message_id in message_ids:
        event = events_pb2.IndexEvent(kind=kind, user_id=user_id, message_id=message_id, at_ms=now)
        await queue.publish(INDEX_TOPIC, user_id.encode(), event.SerializeToString())
